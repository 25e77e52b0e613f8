"""Accuracy evidence of a run: every round's accuracy with its interval, its paired difference
from dense, which rounds win, how far each method goes before it loses, and methods compared
with each other at matched sparsity and at matched FLOPs.

Rows are identified by (method, round); `correct[seed][(method, round)]` is that round's
per-image result under one training seed (bool [N_test], structlth.rounds.load_predictions),
all on the same test images, and `dense[seed]` the dense net's of that seed.

With one seed, an accuracy's interval is Wilson's and a difference is paired on the test images
(Wald interval, exact McNemar p). With several, each seed gives its own paired difference (against
the dense net of the same seed); the report gives their mean with an interval and t-test that
add the seeds' spread to the test-set sampling error the seeds share (structlth.stats.over_seeds).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from statsmodels.stats.multitest import multipletests

from structlth.stats import Paired, accuracy_interval, noninferior, over_seeds, paired

Key = tuple[str, str]
BySeed = Mapping[int, np.ndarray]
EVIDENCE_COLS = [
    "acc_mean",
    "acc_sd",
    "acc_low",
    "acc_high",
    "diff_vs_dense",
    "diff_low",
    "diff_high",
    "p_vs_dense",
    "p_holm",
    "wins",
    "wins_paper",
]


def holm(p: pd.Series) -> pd.Series:
    """Holm's adjustment of a table's p-values (one family: the table), in the same order."""
    return pd.Series(multipletests(p.to_numpy(dtype=float), method="holm")[1] if len(p) else [], index=p.index, dtype=float)


def _as_int(correct: np.ndarray) -> np.ndarray:
    return np.asarray(correct, dtype=bool).reshape(-1).astype(np.int8)


def compare(first: BySeed, second: BySeed) -> Paired:
    """first - second over the seeds both have: one seed, the paired test on its images; more,
    the mean of the per-seed paired differences with the interval and p of over_seeds (b, c:
    summed discordant counts)."""
    seeds = [s for s in first if s in second]
    per = [paired(first[s], second[s]) for s in seeds]
    if len(per) == 1:
        return per[0]
    agg = over_seeds(np.stack([_as_int(first[s]) - _as_int(second[s]) for s in seeds]))
    return Paired(agg.mean, agg.low, agg.high, agg.p, sum(x.b for x in per), sum(x.c for x in per), per[0].n)


def accuracy(correct: BySeed) -> tuple[float, float, float, float]:
    """(mean, sd over seeds, 95% low, high): Wilson's interval with one seed, else over_seeds'
    interval of the mean (the seeds' spread and the shared test-set sampling)."""
    accs = [float(np.mean(c)) for c in correct.values()]
    if len(accs) == 1:
        return (accs[0], 0.0, *accuracy_interval(next(iter(correct.values()))))
    s = over_seeds(np.stack([_as_int(c) for c in correct.values()]))
    return s.mean, s.sd, s.low, s.high


def versus_dense(table: pd.DataFrame, correct: Mapping[int, Mapping[Key, np.ndarray]], dense: BySeed, margin: float) -> pd.DataFrame:
    """`table` (one row per method x round, with test_acc) plus EVIDENCE_COLS:
    - acc_mean, acc_sd, acc_low, acc_high: accuracy over seeds and its 95% interval (see accuracy);
    - diff_vs_dense, diff_low, diff_high, p_vs_dense: difference from dense on the same images
      (per seed, against that seed's dense), its 95% interval and p (see compare);
    - p_holm: p_vs_dense adjusted by Holm across the whole table (every method's rounds);
    - wins: non-inferior to dense at `margin` with 95% confidence (diff_low > -margin), decided
      per round, without a correction across rounds;
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
    ev["p_holm"] = holm(ev["p_vs_dense"])
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
    by_a, b, round_b, by_b, diff (a - b), low, high, p (see compare), p_holm (Holm across the
    returned comparisons), both rounds' accuracies (mean over seeds)."""
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
    out = pd.DataFrame(rows, columns=cols)
    out["p_holm"] = holm(out["p"])
    return out
