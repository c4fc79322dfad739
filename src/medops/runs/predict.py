"""`medops predict --model <uri>`: the family that logged the model predicts (its preprocessing, its outputs)."""

from __future__ import annotations

from pathlib import Path

from medops.errors import DataError
from medops.families import get_family


def predict(cfg, model_uri: str, inp: Path, out: Path, threshold: float = 0.5):
    """Returns ``(family, results)``; the family is read from the model's training run (tag ``family``)."""
    from medops import tracking

    if not 0.0 <= threshold <= 1.0:
        raise DataError(f"--threshold {threshold}", "a probability threshold lies in [0, 1]", "pass e.g. 0.5")
    ref = tracking.resolve_model(model_uri)
    if not ref.family:
        raise DataError(model_uri, "model_family: the model's run has no `family` tag",
                        "register models with `medops promote`")
    fam = get_family(ref.family, cfg)
    return fam, fam.predict(cfg, ref, Path(inp), Path(out), threshold=threshold)
