"""Errors raised at the edges (readers, validation, CLI) with file, rule and fix."""

from __future__ import annotations

import re

_CREDENTIALS = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<user>[^:/@\s]+):(?P<pw>[^@/\s]+)@")


def redact(text: str) -> str:
    """``scheme://user:password@host`` -> ``scheme://user:***@host`` (messages, files and runs never hold a
    password from a URI)."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


class MedopsError(Exception):
    """A user-facing error: what is wrong (where), which rule, how to fix it."""

    def __init__(self, where: str, rule: str, fix: str):
        self.where, self.rule, self.fix = where, redact(str(rule)), fix
        self.where = redact(str(where))
        super().__init__(f"{self.where}: {self.rule}. Fix: {fix}")

    def __reduce__(self):  # survives a process pool: a worker's error reaches the parent with file, rule, fix
        return (type(self), (self.where, self.rule, self.fix))


class ConfigError(MedopsError):
    pass


class DataError(MedopsError):
    pass


class ValidationFailed(Exception):
    """The validation gate found failures; `lines` holds one line per failure."""

    def __init__(self, lines: list[str], report: str):
        self.lines, self.report = lines, report
        super().__init__(f"{len(lines)} validation failure(s); report: {report}\n" + "\n".join(lines))

    def __reduce__(self):
        return (type(self), (self.lines, self.report))
