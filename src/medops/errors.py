"""Errors raised at the edges (readers, validation, CLI) with file, rule and fix."""

from __future__ import annotations


class MedopsError(Exception):
    """A user-facing error: what is wrong (where), which rule, how to fix it."""

    def __init__(self, where: str, rule: str, fix: str):
        self.where, self.rule, self.fix = where, rule, fix
        super().__init__(f"{where}: {rule}. Fix: {fix}")


class ConfigError(MedopsError):
    pass


class DataError(MedopsError):
    pass


class ValidationFailed(Exception):
    """The validation gate found failures; `lines` holds one line per failure."""

    def __init__(self, lines: list[str], report: str):
        self.lines, self.report = lines, report
        super().__init__(f"{len(lines)} validation failure(s); report: {report}\n" + "\n".join(lines))
