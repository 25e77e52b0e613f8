"""Statistics behind the accuracy claims, against values computed by hand, and the evidence
tables built from them (brackets, matched comparisons)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from structlth.evidence import bracket, holm, matched, versus_dense
from structlth.stats import accuracy_interval, mcnemar_exact, noninferior, over_seeds, paired, t_half_width

Z = 1.959963984540054  # the normal 97.5% quantile


def _results(b: int, c: int, both: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Two per-image result vectors with the given 2x2 table (first right only: b, second right
    only: c), shuffled so nothing depends on order."""
    first = np.array([1] * b + [0] * c + [1] * both + [0] * neither, dtype=bool)
    second = np.array([0] * b + [1] * c + [1] * both + [0] * neither, dtype=bool)
    perm = np.random.default_rng(0).permutation(len(first))
    return first[perm], second[perm]


def test_wilson_interval_by_hand():
    k, n = 850, 1000
    p = k / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z / (1 + Z**2 / n) * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n * n))
    lo, hi = accuracy_interval(np.arange(n) < k)
    assert (lo, hi) == pytest.approx((centre - half, centre + half), abs=1e-12)
    assert (round(lo, 4), round(hi, 4)) == (0.8265, 0.8708)
    assert accuracy_interval(np.ones(20, dtype=bool))[1] == pytest.approx(1.0)  # Wilson stays inside [0, 1]


def test_exact_mcnemar_is_the_binomial_tail_of_the_discordant_images():
    assert mcnemar_exact(0, 5) == pytest.approx(2 * 0.5**5)
    # b = 2, c = 8: two-sided = 2 * P(X <= 2), X ~ Bin(10, 1/2) = 2 * (1 + 10 + 45) / 1024
    assert mcnemar_exact(2, 8) == pytest.approx(2 * 56 / 1024)
    assert mcnemar_exact(8, 2) == mcnemar_exact(2, 8)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(5, 5) == pytest.approx(1.0)


def test_paired_difference_interval_and_p_by_hand():
    first, second = _results(b=30, c=50, both=800, neither=120)
    r = paired(first, second)
    n = 1000
    se = math.sqrt(30 + 50 - (30 - 50) ** 2 / n) / n
    assert (r.b, r.c, r.n) == (30, 50, n)
    assert r.diff == pytest.approx(-0.02)
    assert (r.low, r.high) == pytest.approx((-0.02 - Z * se, -0.02 + Z * se), abs=1e-12)
    assert r.p == pytest.approx(mcnemar_exact(30, 50))
    assert paired(second, first).diff == pytest.approx(0.02)  # antisymmetric
    with pytest.raises(ValueError, match="same test images"):
        paired(first, second[:-1])


def test_concordant_images_do_not_change_the_p_value_but_narrow_the_interval():
    """Only disagreements carry evidence about which is better (McNemar); more shared images
    shrink the difference's scale."""
    small, big = paired(*_results(10, 25, 100, 10)), paired(*_results(10, 25, 1000, 100))
    assert small.p == pytest.approx(big.p)
    assert (big.high - big.low) < (small.high - small.low)


def test_noninferiority_reads_the_lower_end_against_the_margin():
    r = paired(*_results(b=0, c=5, both=895, neither=100))  # -0.5%, interval about [-0.94%, -0.06%]
    assert noninferior(r, 0.01) and not noninferior(r, 0.005)


def test_over_seeds_adds_the_seeds_spread_to_the_shared_test_set_error_by_hand():
    """Two seeds on four images: per seed means 0.75 and 0.25 (var 0.125), per image means 1, 0.5,
    0.5, 0 (var 1/6): se^2 = 0.125 / 2 + (1/6) / 4, Welch-Satterthwaite df from 1 and 3."""
    s = over_seeds([[1, 1, 1, 0], [1, 0, 0, 0]])
    spread, shared = 0.125 / 2, (1 / 6) / 4
    se, df = math.sqrt(spread + shared), (spread + shared) ** 2 / (spread**2 / 1 + shared**2 / 3)
    half = stats.t.ppf(0.975, df) * se
    assert (s.mean, s.sd, s.seeds) == pytest.approx((0.5, math.sqrt(0.125), 2))
    assert (s.low, s.high, s.p) == pytest.approx((0.5 - half, 0.5 + half, 2 * stats.t.sf(0.5 / se, df)))
    with pytest.raises(ValueError, match="at least two seeds"):
        over_seeds([[1, 0, 1]])
    assert t_half_width([0.88, 0.90, 0.86]) == pytest.approx(4.302652729911275 * 0.02 / math.sqrt(3))
    with pytest.raises(ValueError, match="at least two"):
        t_half_width([0.9])


def test_identical_nonzero_seed_differences_still_carry_the_test_sets_error():
    """Three seeds each ahead on the same 10 of 1000 images: no seed spread, yet the images are
    a sample, so p is that of the test set, neither 0 nor 1."""
    d = np.zeros((3, 1000))
    d[:, :10] = 1
    s = over_seeds(d)
    assert s.mean == pytest.approx(0.01) and 0.001 < s.p < 0.05 and s.low > 0
    assert over_seeds(np.zeros((2, 5))).p == 1.0


def test_over_seeds_covers_the_truth_when_the_test_set_is_redrawn():
    """Simulated: a population of images, most of which a net of any seed gets right or wrong
    alike, and some the ticket gets differently from dense. Every seed is scored on the same drawn
    test set. over_seeds' interval covers the population's difference at least at its level; the
    seeds' t interval alone, which leaves out the shared test set, does not."""
    rng = np.random.default_rng(0)
    reps, n, k, flip = 400, 1000, 3, 0.01

    def images(m):  # per image: chance dense is right, chance the ticket is right
        dense = np.where(rng.random(m) < 0.1, flip, 1 - flip)
        u = rng.random(m)
        return dense, np.where(u < 0.035, flip, np.where(u < 0.06, 1 - flip, dense))

    dense, ticket = images(2_000_000)
    truth, ours, seeds_only = float(np.mean(ticket - dense)), 0, 0
    for _ in range(reps):
        dense, ticket = images(n)
        d = np.stack([(rng.random(n) < ticket).astype(int) - (rng.random(n) < dense) for _ in range(k)])
        s, per_seed = over_seeds(d), d.mean(1)
        ours += s.low <= truth <= s.high
        seeds_only += abs(per_seed.mean() - truth) <= t_half_width(per_seed)
    assert ours / reps >= 0.95 and seeds_only / reps < 0.9


def test_holm_adjusts_a_tables_p_values_in_place():
    """Sorted 0.01, 0.03, 0.04 of three tests: 3 * 0.01, max(0.03, 2 * 0.03), max(0.06, 0.04)."""
    out = holm(pd.Series([0.04, 0.01, 0.03], index=[5, 6, 7]))
    assert out.index.tolist() == [5, 6, 7] and out.tolist() == pytest.approx([0.06, 0.03, 0.06])
    assert holm(pd.Series([], dtype=float)).empty


def _rows() -> tuple[pd.DataFrame, dict, np.ndarray]:
    """Two methods over three rounds, 1000 test images, dense right on the first 900."""
    n = 1000
    dense = np.arange(n) < 900
    spec = [
        ("a", "round1", 0.20, 0.30, 900),
        ("a", "round2", 0.40, 0.50, 896),
        ("a", "round3", 0.60, 0.70, 850),
        ("b", "round1", 0.21, 0.29, 880),
        ("b", "round2", 0.45, 0.52, 905),
        ("b", "round3", 0.59, 0.71, 902),
    ]
    table = pd.DataFrame([{"method": m, "round": r, "sparsity": s, "flops_saving": f, "test_acc": k / n} for m, r, s, f, k in spec])
    correct = {(m, r): np.arange(n) < k for m, r, _, _, k in spec}
    return table, correct, dense


def test_versus_dense_columns_and_brackets():
    table, correct, dense = _rows()
    t = versus_dense(table, {0: correct}, {0: dense}, margin=0.01)
    assert t["wins"].tolist() == [True, True, False, False, True, True]
    assert t["wins_paper"].tolist() == [True, False, False, False, True, True]
    assert t.loc[0, "p_vs_dense"] == 1.0 and t.loc[2, "diff_vs_dense"] == pytest.approx(-0.05)
    br = bracket(t)
    assert br["a"] == (0.40, 0.60)
    assert br["b"] == (0.59, 0.21)  # loses at its first round, wins above it: reported as it is
    assert bracket(t[t["method"] == "b"].iloc[1:])["b"] == (0.59, None)  # not reached


def test_matched_pairs_the_nearest_round_within_the_window():
    table, correct, _ = _rows()
    correct = {0: correct}
    by_sparsity = matched(table, correct, "sparsity", 0.03)
    assert list(zip(by_sparsity["round_a"], by_sparsity["round_b"])) == [
        ("round1", "round1"),
        ("round3", "round3"),
    ]  # 0.40 vs 0.45: too far
    r = by_sparsity.iloc[1]
    assert r["diff"] == pytest.approx(-0.052) and r["p"] == pytest.approx(mcnemar_exact(0, 52))
    assert by_sparsity["p_holm"].tolist() == holm(by_sparsity["p"]).tolist()  # one family: the table
    by_flops = matched(table, correct, "flops_saving", 0.03)
    assert by_flops["round_b"].tolist() == ["round1", "round2", "round3"]
    assert matched(table, correct, "sparsity", 0.03, methods=["b", "a"])["a"].unique().tolist() == ["b"]


def test_several_seeds_pair_each_round_with_its_own_seeds_dense_and_use_the_spread():
    """Seed 1's dense is 3 points worse; a round that is 1 point below its own seed's dense at
    both seeds differs by -1 point, not by its distance to seed 0's dense."""
    n = 1000
    table = pd.DataFrame([{"method": "a", "round": "round1", "sparsity": 0.5, "flops_saving": 0.5, "test_acc": 0.89}])
    dense = {0: np.arange(n) < 900, 1: np.arange(n) < 870}
    correct = {0: {("a", "round1"): np.arange(n) < 890}, 1: {("a", "round1"): np.arange(n) < 858}}
    t = versus_dense(table, correct, dense, margin=0.02).iloc[0]
    assert t["diff_vs_dense"] == pytest.approx(-0.011)  # mean of -0.010 and -0.012
    diffs = np.stack([correct[s][("a", "round1")].astype(int) - dense[s] for s in (0, 1)])
    s = over_seeds(diffs)  # the seeds' spread and the images' together
    assert (t["diff_low"], t["diff_high"], t["p_vs_dense"]) == pytest.approx((s.low, s.high, s.p))
    assert t["acc_mean"] == pytest.approx(0.874) and t["acc_sd"] == pytest.approx(math.sqrt(2 * 0.016**2))
    assert bool(t["wins"]) == (t["diff_low"] > -0.02)
