"""Statistics for ablations: t-intervals over seeds and paired per-case tests."""

from __future__ import annotations

import numpy as np
from scipy import stats


def mean_ci(values, level: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the t-interval over seeds (half-width nan for one value)."""
    v = np.asarray([x for x in values if x == x], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    if len(v) == 1:
        return float(v[0]), float("nan")
    half = stats.t.ppf(0.5 + level / 2, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return float(v.mean()), float(half)


def paired_test(a, b, *, n_boot: int = 2000, seed: int = 0) -> dict:
    """One-sided Wilcoxon signed-rank test that ``a > b`` on paired per-case values, with a bootstrap 95 %
    CI and standard error (``se``, for the minimum detectable effect) of the mean difference."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = a - b
    if len(d) == 0:
        return {"n": 0, "mean_diff": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "p": float("nan"),
                "se": float("nan")}
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), (n_boot, len(d)))].mean(1)
    p = 1.0 if np.allclose(d, 0) else float(stats.wilcoxon(a, b, alternative="greater", zero_method="zsplit").pvalue)
    return {"n": int(len(d)), "mean_diff": float(d.mean()), "ci_low": float(np.percentile(boots, 2.5)),
            "ci_high": float(np.percentile(boots, 97.5)), "p": p, "se": float(boots.std(ddof=1)) if n_boot > 1 else float("nan")}
