"""`medops predict --model <uri>`: the family that logged the model predicts (its preprocessing, its outputs)."""

from __future__ import annotations

from pathlib import Path

from medops.errors import DataError
from medops.families import get_family
from medops.locks import exclusive


def predict(cfg, model_uri: str, inp: Path, out: Path, threshold: float = 0.5, overwrite: bool = False):
    """Returns ``(family, results)``; the family is read from the model's training run (tag ``family``).
    Earlier results are never silently replaced: a non-empty ``out`` is refused without ``overwrite``
    (and even then, only files of the same names are replaced; nothing is deleted)."""
    from medops import tracking

    if not 0.0 <= threshold <= 1.0:
        raise DataError(f"--threshold {threshold}", "a probability threshold lies in [0, 1]", "pass e.g. 0.5")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise DataError(str(out), "no_overwrite: the output folder already holds files (earlier predictions?)",
                        "choose a new --out, or pass --overwrite to write beside them")
    ref = tracking.resolve_model(model_uri)
    if not ref.family:
        raise DataError(model_uri, "model_family: the model's run has no `family` tag",
                        "register models with `medops promote`")
    fam = get_family(ref.family, cfg)
    with exclusive(out, "this prediction folder"):
        return fam, fam.predict(cfg, ref, Path(inp), out, threshold=threshold)
