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
    half = float(stats.norm.ppf(0.5 + level / 2)) * paired_se(b, c, n)
    return Paired(diff, diff - half, diff + half, mcnemar_exact(b, c), b, c, n)


def paired_se(b: int, c: int, n: int) -> float:
    """Standard error of a paired difference (b - c) / n: sqrt(b + c - (b - c)^2 / n) / n."""
    return math.sqrt(max(b + c - (b - c) ** 2 / n, 0.0)) / n


def noninferior(p: Paired, margin: float) -> bool:
    """The first is no worse than the second by more than `margin`, at the interval's
    confidence: its lower bound lies above -margin."""
    return p.low > -margin


@dataclass(frozen=True)
class SeedSummary:
    """A quantity measured once per training seed on the same test images: mean, sample sd over
    the seeds, the interval of the mean and the two-sided p that the mean is 0 (over_seeds)."""

    mean: float
    sd: float
    low: float
    high: float
    p: float
    seeds: int


def over_seeds(per_image, level: float = LEVEL) -> SeedSummary:
    """Mean over seeds and test images of per_image [K seeds, N images] (1/0 correct, or a paired
    difference in -1/0/1), every seed scored on the same images, K >= 2. Its interval and t-test
    against 0 carry both sources of error, each estimated from its own margin:
    - the seeds' spread, var over seeds of the per-seed means / K;
    - the test-set sampling, which every seed shares (the same images, so it does not shrink
      with more seeds): var over images of the per-image means / N.
    se^2 is their sum (the seed-by-image noise counted in both, so on the wide side), with
    Welch-Satterthwaite degrees of freedom (K - 1 and N - 1)."""
    x = np.asarray(per_image, dtype=float)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"over_seeds needs [seeds, images] with at least two seeds, got shape {x.shape}")
    (k, n), seed_means, image_means = x.shape, x.mean(1), x.mean(0)
    spread, shared = float(seed_means.var(ddof=1)) / k, float(image_means.var(ddof=1)) / n
    mean, se = float(x.mean()), math.sqrt(spread + shared)
    if se == 0:  # every seed right (or equal) on every image
        return SeedSummary(mean, 0.0, mean, mean, 1.0 if mean == 0 else 0.0, k)
    df = (spread + shared) ** 2 / (spread**2 / (k - 1) + shared**2 / (n - 1))
    half = float(stats.t.ppf(0.5 + level / 2, df)) * se
    p = float(2 * stats.t.sf(abs(mean) / se, df))
    return SeedSummary(mean, float(seed_means.std(ddof=1)), mean - half, mean + half, p, k)


def t_half_width(values, level: float = LEVEL) -> float:
    """Half-width of the t interval (K - 1 degrees of freedom) of the mean of values [K], K >= 2:
    t quantile x sample sd / sqrt(K)."""
    v = np.asarray(values, dtype=float).reshape(-1)
    if len(v) < 2:
        raise ValueError("an interval of a mean needs at least two values")
    return float(stats.t.ppf(0.5 + level / 2, len(v) - 1)) * float(v.std(ddof=1)) / math.sqrt(len(v))
