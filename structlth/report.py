"""The report: summary table, winning tickets, headline savings, plots, mask pictures."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

SUMMARY_COLS = ["method", "round", "sparsity", "channel_sparsity", "test_acc", "time_saving", "flops_saving", "engine"]


def summary(metrics: pd.DataFrame, bench: pd.DataFrame, batch: int) -> pd.DataFrame:
    """One row per method x round: metrics joined with the best verified engine at `batch`.

    metrics: method, round, sparsity, channel_sparsity, test_acc, ...; bench: bench.csv rows.
    """
    b = bench[bench["batch"] == batch]
    best = b.loc[b.groupby(["method", "round"])["time_saving"].idxmax(), ["method", "round", "time_saving", "flops_saving", "engine"]]
    out = metrics.merge(best, on=["method", "round"], how="left")
    return out[SUMMARY_COLS].sort_values(["method", "round"], key=lambda s: s.map(_round_key) if s.name == "round" else s)


def _round_key(r: str) -> int:
    return int(str(r).removeprefix("round"))


def winners(table: pd.DataFrame, dense_acc: float, tolerance: float) -> pd.DataFrame:
    return table[table["test_acc"] >= dense_acc - tolerance]


def headline(table: pd.DataFrame, dense_acc: float, tolerance: float) -> dict[str, str]:
    """Per method: 'X% time saving at Y% sparsity' for its best winning ticket."""
    out = {}
    for method, rows in winners(table, dense_acc, tolerance).groupby("method"):
        rows = rows.dropna(subset=["time_saving"])
        if rows.empty:
            continue
        r = rows.loc[rows["time_saving"].idxmax()]
        out[method] = f"{r['time_saving']:.2%} time saving at {r['sparsity']:.2%} sparsity (test acc {r['test_acc']:.4f})"
    return out


GROUP_ENGINES = ("slim+blocks", "subconv")


def targets(bench: pd.DataFrame, batch: int) -> dict[str, float | None]:
    """The speedup targets measured at `batch` (None where no ticket qualifies):

    - channel_time_per_flop_saving: median of time_saving / flops_saving over slim tickets
      with at least 40% FLOP saving (goal >= 0.8);
    - best_group_time_saving: the best group-wise (regroup) time saving (goal >= 0.2);
    - group_minus_csr_min: over rounds, the smallest margin of a regroup ticket's best time
      saving over the CSR baseline of the IMP round it came from (goal > 0);
    - timing_noise: the largest |time saving| of masked_dense, the same computation as dense.
    """
    b = bench[bench["batch"] == batch]
    big = b[(b["engine"] == "slim") & (b["flops_saving"] >= 0.4)]
    group = b[b["engine"].isin(GROUP_ENGINES)].groupby(["method", "round"])["time_saving"].max()
    csr = b[b["engine"] == "csr"].set_index("round")["time_saving"]
    margins = [v - csr[r] for (_, r), v in group.items() if r in csr.index]
    aa = b.loc[b["engine"] == "masked_dense", "time_saving"].abs()
    return {
        "timing_noise": float(aa.max()) if len(aa) else None,
        "channel_time_per_flop_saving": float((big["time_saving"] / big["flops_saving"]).median()) if len(big) else None,
        "best_group_time_saving": float(group.max()) if len(group) else None,
        "group_minus_csr_min": float(min(margins)) if margins else None,
    }


TARGET_ROWS = (  # key, description, goal, test, format
    ("channel_time_per_flop_saving", "channel-wise: time saving / FLOP saving (median, tickets with ≥ 40% FLOP saving)", "≥ 0.8", lambda v: v >= 0.8, "{:.2f}"),
    ("best_group_time_saving", "group-wise: best regroup time saving", "≥ 20%", lambda v: v >= 0.2, "{:.1%}"),
    ("group_minus_csr_min", "group-wise vs CSR at the same IMP round: smallest margin in time saving", "> 0", lambda v: v > 0, "{:+.1%}"),
)


def plot_accuracy(table: pd.DataFrame, dense_acc: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for method, rows in table.groupby("method"):
        ax.plot(rows["sparsity"] * 100, rows["test_acc"] * 100, marker="o", label=method)
    ax.axhline(dense_acc * 100, color="k", ls="--", lw=1, label="dense")
    ax.set(xlabel="sparsity of prunable weights (%)", ylabel="test accuracy (%)", title="Accuracy vs sparsity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_savings(table: pd.DataFrame, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, (method, rows) in enumerate(table.dropna(subset=["time_saving"]).groupby("method")):
        color = f"C{i}"
        ax.plot(rows["sparsity"] * 100, rows["time_saving"] * 100, marker="o", color=color, label=f"{method} (measured)")
        ax.plot(rows["sparsity"] * 100, rows["flops_saving"] * 100, ls=":", color=color, label=f"{method} (FLOP limit)")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="sparsity of prunable weights (%)", ylabel="saving (%)", title="Inference time saving vs sparsity")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_masks(masks: dict[str, torch.Tensor], layer: str, path: Path) -> None:
    """Pictures of one conv's mask ([C_out] rows x [C_in*kh*kw] columns) per method."""
    fig, axes = plt.subplots(1, len(masks), figsize=(3.2 * len(masks), 3.2))
    for ax, (method, m) in zip(axes if len(masks) > 1 else [axes], masks.items()):
        ax.imshow(m.flatten(1).float().numpy(), aspect="auto", cmap="Greys", interpolation="nearest")
        ax.set(title=f"{method}\n{layer}", xlabel="columns (C_in·kh·kw)", ylabel="output channels")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(table: pd.DataFrame, dense_acc: float, tolerance: float, heads: dict[str, str], goals: dict, batch: int, threads: int) -> str:
    lines = [
        "# structlth report",
        "",
        f"Dense baseline: test accuracy **{dense_acc:.4f}**. A ticket *wins* when its test accuracy is"
        f" at least {dense_acc - tolerance:.4f} (dense − {tolerance}). Time savings are verified against the"
        f" masked model and measured at batch {batch} on {threads} CPU threads (see bench.csv for every engine).",
        "",
        "## Headline (best winning ticket per method)",
        "",
    ]
    lines += [f"- **{m}**: {h}" for m, h in sorted(heads.items())] or ["- no winning ticket"]
    lines += ["", f"## Speedup targets (batch {batch})", ""]
    if goals.get("timing_noise") is not None:
        lines += [
            f"Timing noise on this machine: up to {goals['timing_noise']:.1%} — the largest |time saving| of"
            " imp's masked-dense engine, which runs the same computation as the dense net (an A/A test).",
            "",
        ]
    lines += ["| target | measured | goal | met |", "|---|---|---|---|"]
    for key, what, goal, ok, fmt in TARGET_ROWS:
        v = goals.get(key)
        lines.append(f"| {what} | {'n/a' if v is None else fmt.format(v)} | {goal} | {'n/a' if v is None else ('yes' if ok(v) else 'no')} |")
    win = winners(table, dense_acc, tolerance)
    for method, rows in table.groupby("method", sort=False):
        lines += ["", f"## {method}", "", "| round | sparsity | channel sparsity | test acc | winning | time saving | FLOP saving | engine |", "|---|---|---|---|---|---|---|---|"]
        for _, r in rows.iterrows():
            ts = "" if pd.isna(r["time_saving"]) else f"{r['time_saving']:.1%}"
            fs = "" if pd.isna(r["flops_saving"]) else f"{r['flops_saving']:.1%}"
            lines.append(
                f"| {r['round']} | {r['sparsity']:.2%} | {r['channel_sparsity']:.2%} | {r['test_acc']:.4f} |"
                f" {'yes' if r.name in win.index else 'no'} | {ts} | {fs} | {r['engine'] if isinstance(r['engine'], str) else ''} |"
            )
    lines += ["", "## Plots", "", "![accuracy](accuracy_vs_sparsity.png)", "", "![time saving](time_saving_vs_sparsity.png)", "", "![masks](masks.png)", ""]
    return "\n".join(lines)
