"""Accuracy evidence of a run: every round's accuracy with its interval, its paired difference
from dense, which rounds win, how far each method goes before it loses, and methods compared
with each other at matched sparsity and at matched FLOPs.

Rows are identified by (method, round); `correct[seed][(method, round)]` is that round's
per-image result under one training seed (bool [N_test], structlth.rounds.load_predictions),
all on the same test images, and `dense[seed]` the dense net's of that seed.

With one seed, an accuracy's interval is Wilson's and a difference is paired on the test images
(Wald interval, exact McNemar p). With several, each seed gives its own paired difference (against
the dense net of the same seed); the report gives their mean with a t interval over seeds and a
t-test, which covers the test-set sampling and the seed-to-seed spread together.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from structlth.stats import Paired, accuracy_interval, noninferior, over_seeds, paired, seed_ttest

Key = tuple[str, str]
BySeed = Mapping[int, np.ndarray]
EVIDENCE_COLS = ["acc_mean", "acc_sd", "acc_low", "acc_high", "diff_vs_dense", "diff_low", "diff_high", "p_vs_dense", "wins", "wins_paper"]


def compare(first: BySeed, second: BySeed) -> Paired:
    """first - second over the seeds both have: one seed, the paired test on its images; more,
    the mean of the per-seed paired differences with its t interval and t-test p (b, c: summed
    discordant counts)."""
    seeds = [s for s in first if s in second]
    per = [paired(first[s], second[s]) for s in seeds]
    if len(per) == 1:
        return per[0]
    agg = over_seeds([x.diff for x in per])
    return Paired(agg.mean, agg.low, agg.high, seed_ttest([x.diff for x in per]), sum(x.b for x in per), sum(x.c for x in per), per[0].n)


def accuracy(correct: BySeed) -> tuple[float, float, float, float]:
    """(mean, sd over seeds, 95% low, high): Wilson's interval with one seed, else the t interval
    of the mean over seeds."""
    accs = [float(np.mean(c)) for c in correct.values()]
    if len(accs) == 1:
        return (accs[0], 0.0, *accuracy_interval(next(iter(correct.values()))))
    s = over_seeds(accs)
    return s.mean, s.sd, s.low, s.high


def versus_dense(table: pd.DataFrame, correct: Mapping[int, Mapping[Key, np.ndarray]], dense: BySeed, margin: float) -> pd.DataFrame:
    """`table` (one row per method x round, with test_acc) plus EVIDENCE_COLS:
    - acc_mean, acc_sd, acc_low, acc_high: accuracy over seeds and its 95% interval (see accuracy);
    - diff_vs_dense, diff_low, diff_high, p_vs_dense: difference from dense on the same images
      (per seed, against that seed's dense), its 95% interval and p (see compare);
    - wins: non-inferior to dense at `margin` with 95% confidence (diff_low > -margin);
    - wins_paper: the paper's rule, accuracy at least dense's (mean over seeds).
    """
    rows = []
    for _, r in table.iterrows():
        c = {s: res[(r["method"], r["round"])] for s, res in correct.items() if (r["method"], r["round"]) in res}
        mean, sd, lo, hi = accuracy(c)
        d = compare(c, dense)
        rows.append(
            {
                "acc_mean": mean,
                "acc_sd": sd,
                "acc_low": lo,
                "acc_high": hi,
                "diff_vs_dense": d.diff,
                "diff_low": d.low,
                "diff_high": d.high,
                "p_vs_dense": d.p,
                "wins": noninferior(d, margin),
                "wins_paper": d.diff >= 0,
            }
        )
    out, ev = table.reset_index(drop=True).copy(), pd.DataFrame(rows, columns=EVIDENCE_COLS)
    for col in EVIDENCE_COLS:  # in place where the table has the column already (the summary's order)
        out[col] = ev[col]
    return out


def bracket(table: pd.DataFrame, column: str = "wins") -> dict[str, tuple[float | None, float | None]]:
    """Per method: (sparsity of its sparsest winning round, sparsity of its least sparse losing
    round); None where no round wins, or none loses within the rounds run. The first is the
    paper's extreme sparsity; a first value above the second means the method wins again above
    a loss (its rounds do not order cleanly)."""
    out = {}
    for method, rows in table.groupby("method", sort=False):
        won = rows[column].astype(bool)
        out[method] = (
            float(rows.loc[won, "sparsity"].max()) if won.any() else None,
            float(rows.loc[~won, "sparsity"].min()) if (~won).any() else None,
        )
    return out


def matched(
    table: pd.DataFrame, correct: Mapping[int, Mapping[Key, np.ndarray]], by: str, within: float, methods: list[str] | None = None
) -> pd.DataFrame:
    """Paired comparisons of two methods' rounds whose `by` column (sparsity or flops_saving, of
    train.seed's run) differs by at most `within`: each round of method a against the nearest
    round of each later method b (in `methods` order, default the table's). Columns: a, round_a,
    by_a, b, round_b, by_b, diff (a - b), low, high, p (see compare), both rounds' accuracies
    (mean over seeds)."""
    methods = methods or list(dict.fromkeys(table["method"]))
    rows = []
    for i, a in enumerate(methods):
        for b in methods[i + 1 :]:
            ra, rb = table[table["method"] == a], table[table["method"] == b]
            if ra.empty or rb.empty:
                continue
            for _, x in ra.iterrows():
                gap = (rb[by] - x[by]).abs()
                if gap.min() > within:
                    continue
                y = rb.loc[gap.idxmin()]
                ca = {s: res[(a, x["round"])] for s, res in correct.items()}
                cb = {s: res[(b, y["round"])] for s, res in correct.items()}
                p = compare(ca, cb)
                rows.append(
                    {
                        "a": a,
                        "round_a": x["round"],
                        "by_a": float(x[by]),
                        "acc_a": accuracy(ca)[0],
                        "b": b,
                        "round_b": y["round"],
                        "by_b": float(y[by]),
                        "acc_b": accuracy(cb)[0],
                        "diff": p.diff,
                        "low": p.low,
                        "high": p.high,
                        "p": p.p,
                    }
                )
    cols = ["a", "round_a", "by_a", "acc_a", "b", "round_b", "by_b", "acc_b", "diff", "low", "high", "p"]
    return pd.DataFrame(rows, columns=cols)
