"""Statistics behind every accuracy claim: intervals, paired tests on the same test images,
non-inferiority, and the spread over training seeds.

Inputs are per-image results: a bool vector `correct` [N_test], one entry per test image, in the
test set's order (predictions.safetensors holds the predicted class per image; `correct` is
`pred == target`). Two vectors of one test set are paired: the same images, so their
difference is judged by the images on which they disagree (McNemar), not by two accuracies
each carrying its own sampling error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95


def _as_bool(x) -> np.ndarray:
    return np.asarray(x, dtype=bool).reshape(-1)


def accuracy_interval(correct, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval of the accuracy of `correct` [N] (bool per image)."""
    c = _as_bool(correct)
    ci = stats.binomtest(int(c.sum()), len(c)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def sign_test(b: int, c: int) -> float:
    """Two-sided exact sign test: b pairs fell one way, c the other; under 'no difference' each
    pair is a fair coin."""
    return 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: b images only the first gets
    right, c only the second (a sign test over the images on which they disagree)."""
    return sign_test(b, c)


@dataclass(frozen=True)
class Paired:
    """First minus second, on the same n test images."""

    diff: float  # accuracy difference
    low: float  # its interval at `level`
    high: float
    p: float  # exact McNemar, two-sided
    b: int  # images only the first gets right
    c: int  # images only the second gets right
    n: int


def paired(first, second, level: float = LEVEL) -> Paired:
    """Paired accuracy difference of two per-image results [N] (bool) on the same images: the
    difference (b - c) / n with its Wald interval for paired proportions,
    se = sqrt(b + c - (b - c)^2 / n) / n, and the exact McNemar p-value."""
    a, z = _as_bool(first), _as_bool(second)
    if a.shape != z.shape:
        raise ValueError(f"paired results need the same test images: {a.shape[0]} vs {z.shape[0]}")
    n = len(a)
    b, c = int((a & ~z).sum()), int((~a & z).sum())
    diff = (b - c) / n
    se = math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n
    half = float(stats.norm.ppf(0.5 + level / 2)) * se
    return Paired(diff, diff - half, diff + half, mcnemar_exact(b, c), b, c, n)


def noninferior(p: Paired, margin: float) -> bool:
    """The first is no worse than the second by more than `margin`, at the interval's
    confidence: its lower bound lies above -margin."""
    return p.low > -margin


@dataclass(frozen=True)
class SeedSummary:
    """A quantity measured once per training seed: mean, sample sd, and the t interval of the
    mean (with one seed: sd 0 and the interval is the single value's own, given by the caller)."""

    mean: float
    sd: float
    low: float
    high: float
    seeds: int


def over_seeds(values, level: float = LEVEL) -> SeedSummary:
    """Mean ± sd of per-seed values [K] and the t interval (K - 1 degrees of freedom) of their
    mean. Each per-seed value already carries its own test-set sampling error, so the interval
    covers that and the seed-to-seed spread together. K = 1 gives a zero-width interval."""
    v = np.asarray(values, dtype=float).reshape(-1)
    k = len(v)
    if k == 0:
        raise ValueError("no seeds")
    mean = float(v.mean())
    if k == 1:
        return SeedSummary(mean, 0.0, mean, mean, 1)
    half = t_half_width(v, level)
    return SeedSummary(mean, float(v.std(ddof=1)), mean - half, mean + half, k)


def t_half_width(values, level: float = LEVEL) -> float:
    """Half-width of the t interval (K - 1 degrees of freedom) of the mean of values [K], K >= 2:
    t quantile x sample sd / sqrt(K)."""
    v = np.asarray(values, dtype=float).reshape(-1)
    if len(v) < 2:
        raise ValueError("an interval of a mean needs at least two values")
    return float(stats.t.ppf(0.5 + level / 2, len(v) - 1)) * float(v.std(ddof=1)) / math.sqrt(len(v))


def seed_ttest(diffs) -> float:
    """Two-sided one-sample t-test p-value that per-seed paired differences [K] average zero
    (K >= 2; 1.0 where they are all equal)."""
    d = np.asarray(diffs, dtype=float).reshape(-1)
    if len(d) < 2:
        raise ValueError("a t-test over seeds needs at least two seeds")
    if np.all(d == d[0]):
        return 1.0 if d[0] == 0 else 0.0
    return float(stats.ttest_1samp(d, 0.0).pvalue)
