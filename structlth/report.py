"""The report: summary table, winning tickets, headline savings, plots, mask pictures."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from structlth.errors import ArtifactError  # noqa: E402

SUMMARY_COLS = ["method", "round", "sparsity", "unaligned_sparsity", "source_sparsity", "channel_sparsity", "test_acc", "time_saving", "ort_time_saving", "flops_saving", "engine"]


PRODUCTION_ENGINES = ("slim", "slim+blocks")  # chosen per ticket kind before any timing (speedup.choice)


def gather_bench(bench_dir: Path, runs: list[tuple[str, str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """bench.csv and bench_layers.csv rows of every (method, round) in `runs`, from the bench
    stages' bench_dir/<method>/<round>/{timing,layers}.csv."""
    timing, layers = [], []
    for method, rnd in runs:
        d = bench_dir / method / rnd
        for name, acc in (("timing.csv", timing), ("layers.csv", layers)):
            if not (d / name).is_file():
                raise ArtifactError(f"{d / name}: missing; run the bench stage of {method} {rnd} (dvc repro)")
            try:
                acc.append(pd.read_csv(d / name))
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
                raise ArtifactError(f"{d / name}: not a bench table ({e})") from None
    return pd.concat(timing, ignore_index=True), pd.concat(layers, ignore_index=True)


def summary(metrics: pd.DataFrame, bench: pd.DataFrame, batch: int) -> pd.DataFrame:
    """One row per method x round: metrics joined with the production engine's timing at `batch`
    in PyTorch (time_saving) and in ONNX Runtime (ort_time_saving, where it was timed).

    metrics: method, round, sparsity, channel_sparsity, test_acc, ...; bench: bench.csv rows.
    Unstructured imp has no production engine: its masked-dense and CSR rows stay baselines in
    bench.csv, and its time saving here is empty.
    """
    b = bench[(bench["batch"] == batch) & bench["engine"].isin(PRODUCTION_ENGINES)]
    best = b.loc[b["runtime"] == "torch", ["method", "round", "time_saving", "flops_saving", "engine"]]
    ort = b.loc[b["runtime"] == "onnxruntime", ["method", "round", "time_saving"]].rename(columns={"time_saving": "ort_time_saving"})
    out = metrics.merge(best, on=["method", "round"], how="left").merge(ort, on=["method", "round"], how="left")
    return out.reindex(columns=SUMMARY_COLS).sort_values(["method", "round"], key=lambda s: s.map(_round_key) if s.name == "round" else s)


def _round_key(r: str) -> int:
    return int(str(r).removeprefix("round"))


def winners(table: pd.DataFrame, dense_acc: float, tolerance: float) -> pd.DataFrame:
    return table[table["test_acc"] >= dense_acc - tolerance]


def headline(table: pd.DataFrame, dense_acc: float, tolerance: float, noise: float = 0.0) -> dict[str, str]:
    """Per method: 'X% time saving at Y% sparsity' for its best winning ticket whose time saving
    exceeds the run's timing noise."""
    out = {}
    for method, rows in winners(table, dense_acc, tolerance).groupby("method"):
        rows = rows.dropna(subset=["time_saving"])
        rows = rows[rows["time_saving"] > noise]
        if rows.empty:
            continue
        r = rows.loc[rows["time_saving"].idxmax()]
        out[method] = f"{r['time_saving']:.2%} time saving at {r['sparsity']:.2%} sparsity (test acc {r['test_acc']:.4f})"
    return out


def extreme_sparsity(table: pd.DataFrame, dense_acc: float, tolerance: float) -> dict[str, float | None]:
    """Per method, the paper's "extreme sparsity": the highest sparsity among its winning tickets
    (None where no round wins)."""
    win = winners(table, dense_acc, tolerance)
    return {m: (float(win.loc[win["method"] == m, "sparsity"].max()) if (win["method"] == m).any() else None) for m in table["method"].unique()}


def paper_vs_run(table: pd.DataFrame, dense_acc: float, tolerance: float, paper) -> list[str]:
    """Markdown lines: the paper's remaining weights and accuracy beside the run's, round by
    round, with differences in percentage points; then the extreme sparsity of both.
    paper: a structlth.paper.PaperTable, or None when the paper has no numbers for the setting."""
    lines = ["## Paper vs this run", ""]
    if paper is None:
        return lines + ["The paper gives no table for this dataset and model.", ""]
    lines += [f"Paper: {paper.source}" + (f", dense {paper.dense_acc:.2f}%" if paper.dense_acc else "") + f"; this run: dense {dense_acc:.2%}.", ""]
    if paper.rounds:
        lines += ["| method | round | paper remaining | run remaining | Δ (pp) | paper acc | run acc | Δ (pp) |", "|---|---|---|---|---|---|---|---|"]
        run = {(r["method"], _round_key(r["round"])): r for _, r in table.iterrows()}
        for method, rounds in paper.rounds.items():
            for k, (rem, acc) in rounds.items():
                r = run.get((method, k))
                if r is None:
                    lines.append(f"| {method} | round{k} | {rem:.2f}% | – | – | {acc:.2f}% | – | – |")
                    continue
                run_rem, run_acc = 100 * (1 - r["sparsity"]), 100 * r["test_acc"]
                lines.append(f"| {method} | round{k} | {rem:.2f}% | {run_rem:.2f}% | {run_rem - rem:+.2f} | {acc:.2f}% | {run_acc:.2f}% | {run_acc - acc:+.2f} |")
        lines.append("")
    ours = extreme_sparsity(table, dense_acc, tolerance)
    lines += ["| method | paper extreme sparsity | run extreme sparsity |", "|---|---|---|"]
    for method in sorted(set(paper.extreme) | set(ours)):
        pe, re_ = paper.extreme.get(method), ours.get(method)
        lines.append(f"| {method} | {'–' if pe is None else f'{pe:.0f}%'} | {'none wins' if re_ is None else f'{re_:.2%}'} |")
    return lines + [""]


def timing_noise(bench: pd.DataFrame, batch: int, runtime: str = "torch") -> float | None:
    """The run's own timing noise at `batch` in `runtime`, the larger of:
    - A/A: the largest |time saving| of imp's masked-dense engine (the same work as dense);
    - the spread of the dense net's timings across rows: every row times the same dense net, so
      twice the median of |t_dense / median(t_dense) - 1| says how far a measurement typically
      strays (rows that stray more than STRAY are re-timed by the bench stage, and listed).
    None where neither can be measured."""
    b = bench[(bench["batch"] == batch) & (bench["runtime"] == runtime)]
    parts = [float(b.loc[b["engine"] == "masked_dense", "time_saving"].abs().max())] if (b["engine"] == "masked_dense").any() else []
    if "t_dense_ms" in b and len(b) > 1:
        parts.append(2 * float((b["t_dense_ms"] / b["t_dense_ms"].median() - 1).abs().median()))
    return max(parts) if parts else None


def suspect_rows(bench: pd.DataFrame, noise: float) -> pd.DataFrame:
    """Rows whose time saving beats their FLOP saving (the physical limit) by more than the noise."""
    return bench[bench["time_saving"] > bench["flops_saving"] + noise]


def targets(bench: pd.DataFrame, batch: int) -> dict[str, float | None]:
    """The speedup measurements at `batch` in PyTorch (None where no ticket qualifies):

    - timing_noise, ort_timing_noise: see `timing_noise` (PyTorch, ONNX Runtime);
    - channel_time_per_flop_saving: median of time_saving / flops_saving over slim tickets with
      at least 40% FLOP saving;
    - best_group_time_saving: the best regroup (slim+blocks) time saving;
    - group_time_per_flop_saving: median of time_saving / flops_saving over regroup tickets.
    """
    b = bench[(bench["batch"] == batch) & (bench["runtime"] == "torch")]
    big = b[(b["engine"] == "slim") & (b["flops_saving"] >= 0.4)]
    group = b[b["engine"] == "slim+blocks"]
    return {
        "timing_noise": timing_noise(bench, batch),
        "ort_timing_noise": timing_noise(bench, batch, "onnxruntime"),
        "channel_time_per_flop_saving": float((big["time_saving"] / big["flops_saving"]).median()) if len(big) else None,
        "best_group_time_saving": float(group["time_saving"].max()) if len(group) else None,
        "group_time_per_flop_saving": float((group["time_saving"] / group["flops_saving"]).median()) if len(group) else None,
    }


TARGET_ROWS = (  # key, description, goal, test, format
    ("channel_time_per_flop_saving", "channel-wise: time saving / FLOP saving (median, tickets with ≥ 40% FLOP saving)", "≥ 0.6", lambda v, n: v >= 0.6, "{:.2f}"),
    ("best_group_time_saving", "group-wise: best regroup time saving", "≥ 15% and > 3× noise", lambda v, n: v >= 0.15 and v > 3 * n, "{:.1%}"),
    ("group_time_per_flop_saving", "group-wise: time saving / FLOP saving (median over regroup tickets)", "reported", lambda v, n: True, "{:.2f}"),
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


def plot_savings(table: pd.DataFrame, path: Path, noise: float = 0.0) -> None:
    """Measured time saving (PyTorch; ONNX Runtime dashed, where timed) and the FLOP limit per
    method against sparsity; the grey band is the run's PyTorch timing noise (savings inside it
    are not results)."""
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for i, (method, rows) in enumerate(table.dropna(subset=["time_saving"]).groupby("method")):
        color = f"C{i}"
        ax.plot(rows["sparsity"] * 100, rows["time_saving"] * 100, marker="o", color=color, label=f"{method} (measured)")
        ax.plot(rows["sparsity"] * 100, rows["flops_saving"] * 100, ls=":", color=color, label=f"{method} (FLOP limit)")
        if rows["ort_time_saving"].notna().any():
            ax.plot(rows["sparsity"] * 100, rows["ort_time_saving"] * 100, marker="x", ls="--", color=color, label=f"{method} (ONNX Runtime)")
    if noise:
        ax.axhspan(-noise * 100, noise * 100, color="0.85", zorder=0, label=f"timing noise ±{noise:.1%}")
    ax.axhline(0, color="k", lw=0.5)
    ax.set(xlabel="sparsity of prunable weights (%)", ylabel="saving (%)", title="Inference time saving vs sparsity")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def block_order(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column permutations of a 2-D mask [R, K] that make its blocks contiguous: rows
    grouped by identical pattern (larger groups first, dead rows last), columns by the first
    row group that uses them (unused columns last)."""
    flat = mask.bool()
    patterns, inverse, counts = torch.unique(flat, dim=0, return_inverse=True, return_counts=True)
    rank = sorted(range(len(patterns)), key=lambda g: (not bool(patterns[g].any()), -int(counts[g]), g))
    position = torch.empty(len(patterns), dtype=torch.long)
    position[torch.tensor(rank)] = torch.arange(len(patterns))
    rows = torch.sort(position[inverse], stable=True).indices
    ordered = flat[rows]
    first = torch.where(ordered.any(0), ordered.float().argmax(0), torch.tensor(len(rows)))
    return rows, torch.sort(first, stable=True).indices


def plot_masks(masks: dict[str, torch.Tensor], layer: str, round_id: str, path: Path) -> None:
    """One conv's mask per method ([C_out] rows x [C_in*kh*kw] columns), rows and columns
    permuted by `block_order` so a ticket's blocks show as the paper draws them."""
    fig, axes = plt.subplots(1, len(masks), figsize=(3.2 * len(masks), 3.6))
    for ax, (method, m) in zip(axes if len(masks) > 1 else [axes], masks.items()):
        flat = m.flatten(1)
        rows, cols = block_order(flat)
        ax.imshow(flat[rows][:, cols].float().numpy(), aspect="auto", cmap="Greys", interpolation="nearest")
        ax.set(title=f"{method}, {round_id}\n{layer}", xlabel="columns (C_in·kh·kw), permuted", ylabel="output channels, permuted")
    fig.suptitle("black: a kept weight; rows and columns permuted so blocks are contiguous", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


CLAIMS = (
    "The paper (Chen et al., ICML 2022) claims two things: structured tickets made by refilling or regrouping"
    " IMP masks keep the dense network's accuracy, and they run faster than dense (up to 64.93% running-time"
    " saving on CIFAR, on a GPU). The targets below are this project's floors for a 2-core CPU (issues #10, #11):"
    " channel-wise efficiency ≥ 0.6 and a regroup saving ≥ 15% that exceeds 3× the run's own timing noise."
)


def _saving(v: float, noise: float) -> str:
    """A time saving for the tables: empty where not timed, `~0 (x)` inside the noise."""
    return "" if pd.isna(v) else (f"{v:.1%}" if abs(v) > noise else f"~0 ({v:.1%})")


def markdown(table: pd.DataFrame, dense_acc: float, tolerance: float, heads: dict[str, str], goals: dict, batch: int, threads: int, paper_lines: list[str] = (), suspects: pd.DataFrame | None = None) -> str:
    lines = [
        "# structlth report",
        "",
        CLAIMS,
        "",
        f"Dense baseline: test accuracy **{dense_acc:.4f}**. A ticket *wins* when its test accuracy is"
        f" at least {dense_acc - tolerance:.4f} (dense − {tolerance}). Time savings are verified against the"
        f" masked model and measured at batch {batch} on {threads} CPU threads (see bench.csv for every engine).",
        "",
        "## Headline (best winning ticket per method)",
        "",
    ]
    lines += [f"- **{m}**: {h}" for m, h in sorted(heads.items())] or ["- no winning ticket"]
    extreme = extreme_sparsity(table, dense_acc, tolerance)
    lines += ["", f"Extreme sparsity (the sparsest winning ticket per method, tolerance {tolerance}): "
              + ", ".join(f"{m} {'none' if v is None else f'{v:.2%}'}" for m, v in extreme.items()) + "."]
    lines += ["", f"## Speedup targets (batch {batch})", ""]
    if goals.get("timing_noise") is not None:
        lines += [
            f"Timing noise of this run: {goals['timing_noise']:.1%} — the larger of the A/A test (imp's masked-dense"
            " engine runs the same work as the dense net) and twice the median deviation of the dense net's"
            " timings across rows. A time saving counts only above it: smaller ones show as `~0` in the tables.",
            "",
        ]
    if goals.get("ort_timing_noise") is not None:
        lines += [f"ONNX Runtime (CPU execution provider, same threads): timing noise {goals['ort_timing_noise']:.1%}, measured the same way.", ""]
    lines += ["| target | measured | goal | met |", "|---|---|---|---|"]
    noise, ort_noise = goals.get("timing_noise") or 0.0, goals.get("ort_timing_noise") or 0.0
    for key, what, goal, ok, fmt in TARGET_ROWS:
        v = goals.get(key)
        lines.append(f"| {what} | {'n/a' if v is None else fmt.format(v)} | {goal} | {'n/a' if v is None else ('yes' if ok(v, noise) else 'no')} |")
    if suspects is not None and len(suspects):
        lines += ["", "Rows whose time saving beats their FLOP saving (the physical limit) by more than the noise — not to be trusted:", ""]
        lines += [f"- {r['method']} {r['round']} batch {r['batch']} {r['engine']}: {r['time_saving']:.1%} time vs {r['flops_saving']:.1%} FLOPs" for _, r in suspects.iterrows()]
    win = winners(table, dense_acc, tolerance)
    for method, rows in table.groupby("method", sort=False):
        lines += ["", f"## {method}", "", "| round | sparsity | source IMP sparsity | channel sparsity | test acc | winning | time saving | ONNX Runtime saving | FLOP saving | engine |", "|---|---|---|---|---|---|---|---|---|---|"]
        for _, r in rows.iterrows():
            src = "" if pd.isna(r["source_sparsity"]) else f"{r['source_sparsity']:.2%}"
            sp = f"{r['sparsity']:.2%}" + ("" if pd.isna(r["unaligned_sparsity"]) else f" ({r['unaligned_sparsity']:.2%} before align)")
            ts, ots = _saving(r["time_saving"], noise), _saving(r["ort_time_saving"], ort_noise)
            fs = "" if pd.isna(r["flops_saving"]) else f"{r['flops_saving']:.1%}"
            lines.append(
                f"| {r['round']} | {sp} | {src} | {r['channel_sparsity']:.2%} | {r['test_acc']:.4f} |"
                f" {'yes' if r.name in win.index else 'no'} | {ts} | {ots} | {fs} | {r['engine'] if isinstance(r['engine'], str) else ''} |"
            )
    lines += ["", *paper_lines, "## Plots", "", "![accuracy](accuracy_vs_sparsity.png)", "", "![time saving](time_saving_vs_sparsity.png)", "", "![masks](masks.png)", ""]
    return "\n".join(lines)
