"""The report: summary table with accuracy evidence, winning tickets, headline savings, plots,
mask pictures."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from structlth.artifacts import load_tensors, read_json, write_json  # noqa: E402
from structlth.errors import ArtifactError  # noqa: E402
from structlth.evidence import EVIDENCE_COLS, accuracy, bracket, matched, versus_dense  # noqa: E402
from structlth.masks import row_density  # noqa: E402
from structlth.paper import paper_table  # noqa: E402
from structlth.rounds import load_predictions  # noqa: E402
from structlth.speedup.measure import PRODUCTION_ENGINES, aa_readings, timing_noise  # noqa: E402

SUMMARY_COLS = [
    "method",
    "round",
    "sparsity",
    "rows_remaining",
    "source",
    "unaligned_sparsity",
    "source_sparsity",
    "channel_sparsity",
    "test_acc",
    *EVIDENCE_COLS,
    "time_saving",
    "time_ci95",
    "ort_time_saving",
    "ort_time_ci95",
    "flops_saving",
    "engine",
]


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
    in PyTorch (time_saving) and in ONNX Runtime (ort_time_saving, where it was timed), each with
    its 95% half-width (time_ci95, ort_time_ci95; empty for a bench timed in one block).

    metrics: method, round, sparsity, channel_sparsity, test_acc, ...; bench: bench.csv rows.
    Unstructured imp has no production engine: its masked-dense and CSR rows stay baselines in
    bench.csv, and its time saving here is empty, as it is for rounds that were not benched.
    flops_saving comes from the metrics (1 - flops / flops_dense) where no bench row gives it.
    """
    b = bench[(bench["batch"] == batch) & bench["engine"].isin(PRODUCTION_ENGINES)]
    b = b.rename(columns={"ci95": "time_ci95"})
    best = b.loc[b["runtime"] == "torch", ["method", "round", "time_saving", "time_ci95", "flops_saving", "engine"]]
    ort = b.loc[b["runtime"] == "onnxruntime", ["method", "round", "time_saving", "time_ci95"]]
    ort = ort.rename(columns={"time_saving": "ort_time_saving", "time_ci95": "ort_time_ci95"})
    out = metrics.merge(best, on=["method", "round"], how="left").merge(ort, on=["method", "round"], how="left")
    if {"flops", "flops_dense"} <= set(out.columns):
        out["flops_saving"] = out["flops_saving"].fillna(1 - out["flops"] / out["flops_dense"])
    order = {m: i for i, m in enumerate(dict.fromkeys(metrics["method"]))}
    return (
        out.reindex(columns=SUMMARY_COLS)
        .sort_values(["method", "round"], key=lambda s: s.map(_round_key) if s.name == "round" else s.map(order))
        .reset_index(drop=True)
    )


def _round_key(r: str) -> int:
    return int(str(r).removeprefix("round"))


def winners(table: pd.DataFrame, column: str = "wins") -> pd.DataFrame:
    """Rows that win by `column`: wins (non-inferior to dense, structlth.evidence) or wins_paper."""
    return table[table[column].astype(bool)]


def inside_noise(saving: float, noise: float, ci: float) -> bool:
    """Whether a time saving is no result: within the run's noise or its own 95% half-width (NaN: none)."""
    return abs(saving) <= max(noise, 0.0 if pd.isna(ci) else ci)


def headline(table: pd.DataFrame, noise: float = 0.0) -> dict[str, str]:
    """Per method: its sparsest winning ticket that was timed, as 'X% time saving at Y% sparsity
    (...)'; a saving inside the run's timing noise or its own interval shows as ~0."""
    out = {}
    for method, rows in winners(table).dropna(subset=["time_saving"]).groupby("method", sort=False):
        r = rows.loc[rows["sparsity"].idxmax()]
        v = r["time_saving"]
        saving = f"~0 ({v:.2%}, inside the noise)" if inside_noise(v, noise, r.get("time_ci95")) else f"{v:.2%}"
        out[method] = (
            f"{saving} time saving at {r['sparsity']:.2%} sparsity ({r['flops_saving']:.1%} FLOP saving), {r['round']}:"
            f" test acc {r['acc_mean']:.4f}, {r['diff_vs_dense']:+.2%} vs dense [{r['diff_low']:+.2%}, {r['diff_high']:+.2%}]"
        )
    return out


def extreme_sparsity(table: pd.DataFrame, column: str = "wins") -> dict[str, float | None]:
    """Per method, the paper's "extreme sparsity": the highest sparsity among its winning
    rounds by `column` (None where no round wins)."""
    win = winners(table, column)
    return {
        m: (float(win.loc[win["method"] == m, "sparsity"].max()) if (win["method"] == m).any() else None) for m in table["method"].unique()
    }


PLUS_EPOCHS = 240  # the paper's (+) settings (Tables A5/A6): 240 epochs, decays at 150/180/210


def rows_remaining(round_dir: Path) -> float:
    """Remaining weights of a round counted in whole rows (masks.row_density)."""
    return row_density(load_tensors(round_dir / "mask.safetensors")[0])


def paper_vs_run(table: pd.DataFrame, dense_acc: float, paper, refills: list[str] = (), epochs: int | None = None) -> list[str]:
    """Markdown lines: the paper's remaining weights and accuracy beside the run's, round by
    round, with differences in percentage points; then the extreme sparsity of both.
    paper: a structlth.paper.PaperTable, or None when the paper has no numbers for the setting.
    table: summary rows, with rows_remaining (whole rows: the paper's count for refill);
    refills: the run's refill-kind tickets (Fig. 4/5's channel-wise extreme is "Refill(+)", the
    better of refill and refill+); epochs: the run's schedule, checked against a (+) table's."""
    lines = ["## Paper vs this run", ""]
    if paper is None:
        return lines + ["The paper gives no table for this dataset and model.", ""]
    lines += [
        f"Paper: {paper.source}" + (f", dense {paper.dense_acc:.2f}%" if paper.dense_acc else "") + f"; this run: dense {dense_acc:.2%}.",
        "",
    ]
    if "(+)" in paper.source and epochs is not None and epochs != PLUS_EPOCHS:
        lines += [
            f"**Not like for like:** {paper.source.split(' (')[0]} is the paper's (+) setting ({PLUS_EPOCHS} epochs, decays at"
            f" 150/180/210; Table A6 without a validation split); this run trains {epochs} epochs."
            " configs/cifar100_vgg16_plus.yaml and cifar100_wrn32_2_plus.yaml run that schedule.",
            "",
        ]
    if paper.rounds:
        lines += [
            "Remaining weights are compared as the paper counts them: for refill, whole refilled rows (our own count also"
            " drops the weights that read from dropped channels, shown beside it).",
            "",
            "| method | round | paper remaining | run remaining (paper's count) | Δ (pp) | run remaining (ours)"
            " | paper acc | run acc | Δ (pp) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        run = {(r["method"], _round_key(r["round"])): r for _, r in table.iterrows()}
        for method, rounds in paper.rounds.items():
            for k, (rem, acc) in rounds.items():
                r = run.get((method, k))
                if r is None:
                    lines.append(f"| {method} | round{k} | {rem:.2f}% | – | – | – | {acc:.2f}% | – | – |")
                    continue
                ours_rem = 100 * (1 - r["sparsity"])
                like = 100 * r["rows_remaining"] if method == "refill" and pd.notna(r.get("rows_remaining")) else ours_rem
                run_acc = 100 * r["test_acc"]
                lines.append(
                    f"| {method} | round{k} | {rem:.2f}% | {like:.2f}% | {like - rem:+.2f} | {ours_rem:.2f}%"
                    f" | {acc:.2f}% | {run_acc:.2f}% | {run_acc - acc:+.2f} |"
                )
        lines.append("")
    ours, ours_paper = extreme_sparsity(table), extreme_sparsity(table, "wins_paper")
    if refills:  # Refill(+): the better of the refill-kind tickets
        best = [v for v in (ours.get(m) for m in refills) if v is not None]
        best_paper = [v for v in (ours_paper.get(m) for m in refills) if v is not None]
        ours["refill(+)"], ours_paper["refill(+)"] = max(best, default=None), max(best_paper, default=None)
        paper = dataclasses.replace(paper, extreme={("refill(+)" if k == "refill" else k): v for k, v in paper.extreme.items()})
    lines += ["| method | paper extreme sparsity | run: non-inferior | run: the paper's rule (≥ dense) |", "|---|---|---|---|"]
    for method in sorted(set(paper.extreme) | set(ours)):
        pe, re_, rp = paper.extreme.get(method), ours.get(method), ours_paper.get(method)
        lines.append(
            f"| {method} | {'–' if pe is None else f'{pe:.0f}%'} | {'none wins' if re_ is None else f'{re_:.2%}'}"
            f" | {'none wins' if rp is None else f'{rp:.2%}'} |"
        )
    return lines + [""]


def suspect_rows(bench: pd.DataFrame, noise: float) -> pd.DataFrame:
    """Rows whose time saving beats their FLOP saving (the physical limit) by more than the noise."""
    return bench[bench["time_saving"] > bench["flops_saving"] + noise]


def _efficiencies(b: pd.DataFrame) -> dict[str, float | None]:
    """The speed figures of one runtime's rows at one batch size (see `targets`)."""
    big = b[(b["engine"] == "slim") & (b["flops_saving"] >= 0.4)]
    group = b[b["engine"] == "slim+blocks"]
    return {
        "channel_time_per_flop_saving": float((big["time_saving"] / big["flops_saving"]).median()) if len(big) else None,
        "best_group_time_saving": float(group["time_saving"].max()) if len(group) else None,
        "group_time_per_flop_saving": float((group["time_saving"] / group["flops_saving"]).median()) if len(group) else None,
    }


def targets(bench: pd.DataFrame, batch: int) -> dict[str, float | str | None]:
    """The speedup measurements at `batch` (None where no ticket qualifies), in PyTorch and,
    prefixed `ort_`, in ONNX Runtime:

    - timing_noise: see `timing_noise`;
    - aa_stages, aa_median, aa_largest, aa_largest_stage: how many bench stages read A/A
      (`aa_readings`), the median and largest reading, and the stage of the largest;
    - channel_time_per_flop_saving: median of time_saving / flops_saving over slim tickets with
      at least 40% FLOP saving;
    - best_group_time_saving: the best regroup (slim+blocks) time saving;
    - group_time_per_flop_saving: median of time_saving / flops_saving over regroup tickets.
    """
    out: dict[str, float | str | None] = {}
    for runtime, prefix in (("torch", ""), ("onnxruntime", "ort_")):
        b = bench[(bench["batch"] == batch) & (bench["runtime"] == runtime)]
        out[f"{prefix}timing_noise"] = timing_noise(bench, batch, runtime)
        aa = aa_readings(bench, batch, runtime)
        out[f"{prefix}aa_stages"] = len(aa)
        out[f"{prefix}aa_median"] = float(aa.median()) if len(aa) else None
        out[f"{prefix}aa_largest"] = float(aa.max()) if len(aa) else None
        out[f"{prefix}aa_largest_stage"] = str(aa.idxmax()) if len(aa) else None
        out |= {f"{prefix}{k}": v for k, v in _efficiencies(b).items()}
    return out


def kernel_channels_per_channel(bench: pd.DataFrame, layers: pd.DataFrame, batch: int) -> float | None:
    """Output channels PyTorch's oneDNN convs computed per output channel the channel-wise
    tickets' slim convs carry, at `batch`: kernel_channels over channels, each summed over those
    tickets' layers (bench_layers.csv); None where no layer has kernel_channels (e.g. on a GPU)."""
    if "kernel_channels" not in layers or not len(layers):
        return None
    slim = bench[(bench["runtime"] == "torch") & (bench["batch"] == batch) & (bench["engine"] == "slim")]  # as `_efficiencies`
    rows = layers[(layers["runtime"] == "torch") & (layers["batch"] == batch)].dropna(subset=["kernel_channels", "channels"])
    rows = rows.merge(slim[["method", "round"]].drop_duplicates(), on=["method", "round"])
    return float(rows["kernel_channels"].sum() / rows["channels"].sum()) if len(rows) else None


CHANNEL_FLOOR, GROUP_FLOOR = 0.6, 0.15
TARGET_ROWS = (  # key, description, goal, test (value, that runtime's noise), format
    (
        "channel_time_per_flop_saving",
        "channel-wise: time saving / FLOP saving (median, tickets with ≥ 40% FLOP saving)",
        f"≥ {CHANNEL_FLOOR}",
        lambda v, n: v >= CHANNEL_FLOOR,
        "{:.2f}",
    ),
    (
        "best_group_time_saving",
        "group-wise: best regroup time saving",
        f"≥ {GROUP_FLOOR:.0%} and > 3× noise",
        lambda v, n: v >= GROUP_FLOOR and v > 3 * n,
        "{:.1%}",
    ),
    (
        "group_time_per_flop_saving",
        "group-wise: time saving / FLOP saving (median over regroup tickets)",
        "reported",
        lambda v, n: True,
        "{:.2f}",
    ),
)


def method_colors(methods: list[str]) -> dict[str, str]:
    """One colour per method, the same in every plot: matplotlib's cycle in params order."""
    return {m: f"C{i % 10}" for i, m in enumerate(methods)}


def plot_accuracy(table: pd.DataFrame, dense: dict, colors: dict[str, str], path: Path) -> None:
    """Test accuracy against sparsity per method, with 95% interval bars; dense's interval is
    the grey band."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method, rows in table.groupby("method", sort=False):
        err = [(rows["acc_mean"] - rows["acc_low"]) * 100, (rows["acc_high"] - rows["acc_mean"]) * 100]
        ax.errorbar(
            rows["sparsity"] * 100, rows["acc_mean"] * 100, yerr=err, marker="o", ms=4, capsize=2, color=colors[method], label=method
        )
    ax.axhline(dense["acc"] * 100, color="k", ls="--", lw=1, label="dense")
    ax.axhspan(dense["low"] * 100, dense["high"] * 100, color="0.88", zorder=0, label="dense 95% interval")
    ax.set(
        xlabel="sparsity of prunable weights (%)",
        ylabel="test accuracy (%)",
        title=f"Accuracy vs sparsity ({dense['n']} test images, 95% intervals)",
    )
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tradeoff(table: pd.DataFrame, dense: dict, colors: dict[str, str], path: Path, noise: float = 0.0) -> None:
    """Test accuracy against measured time saving (PyTorch), with 95% interval bars: the trade-off
    the paper argues. Dense is the point at zero saving; the band is the timing noise."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method, rows in table.dropna(subset=["time_saving"]).groupby("method", sort=False):
        err = [(rows["acc_mean"] - rows["acc_low"]) * 100, (rows["acc_high"] - rows["acc_mean"]) * 100]
        ax.errorbar(
            rows["time_saving"] * 100,
            rows["acc_mean"] * 100,
            yerr=err,
            marker="o",
            ms=4,
            capsize=2,
            ls="",
            color=colors[method],
            label=method,
        )
    ax.errorbar(
        [0],
        [dense["acc"] * 100],
        yerr=[[(dense["acc"] - dense["low"]) * 100], [(dense["high"] - dense["acc"]) * 100]],
        marker="*",
        ms=10,
        color="k",
        capsize=2,
        ls="",
        label="dense",
    )
    if noise:
        ax.axvspan(-noise * 100, noise * 100, color="0.88", zorder=0, label=f"timing noise ±{noise:.1%}")
    ax.set(xlabel="measured inference time saving (%)", ylabel="test accuracy (%)", title="Accuracy vs time saving")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_savings(table: pd.DataFrame, colors: dict[str, str], path: Path, noise: float = 0.0) -> None:
    """Measured time saving (PyTorch; ONNX Runtime dashed, where timed) and the FLOP limit per
    method against sparsity; the grey band is the run's PyTorch timing noise (savings inside it
    are not results)."""
    fig, ax = plt.subplots(figsize=(7.5, 4))
    for method, rows in table.dropna(subset=["time_saving"]).groupby("method", sort=False):
        color = colors[method]
        ax.plot(rows["sparsity"] * 100, rows["time_saving"] * 100, marker="o", color=color, label=f"{method} (measured)")
        ax.plot(rows["sparsity"] * 100, rows["flops_saving"] * 100, ls=":", color=color, label=f"{method} (FLOP limit)")
        if rows["ort_time_saving"].notna().any():
            ax.plot(
                rows["sparsity"] * 100, rows["ort_time_saving"] * 100, marker="x", ls="--", color=color, label=f"{method} (ONNX Runtime)"
            )
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
    " saving on CIFAR, on a GPU). This report tests both on this run: accuracy by paired tests on the same"
    " test images, speed by verified engines timed against dense in one process, in PyTorch and in ONNX"
    f" Runtime. The speed floors for a 2-core CPU: channel-wise efficiency ≥ {CHANNEL_FLOOR} and a regroup"
    f" saving ≥ {GROUP_FLOOR:.0%} that exceeds 3× the run's own timing noise."
)


def _saving(v: float, noise: float, ci: float = float("nan")) -> str:
    """A time saving for the tables: empty where not timed, with its 95% half-width where it has
    one, `~0 (x)` inside the noise or that half-width."""
    if pd.isna(v):
        return ""
    shown = f"{v:.1%}" + ("" if pd.isna(ci) else f" ± {ci:.1%}")
    return f"~0 ({shown})" if inside_noise(v, noise, ci) else shown


def _pct(v: float | None) -> str:
    return "–" if v is None or pd.isna(v) else f"{v:.2%}"


def _p(v: float) -> str:
    return f"{v:.2g}" if v < 0.001 else f"{v:.3f}"


def evidence_lines(table: pd.DataFrame, dense: dict, margin: float) -> list[str]:
    """The accuracy-evidence section: dense with its interval, the definition of winning, and
    each method's bracket (last winning round, first losing round)."""
    seeds = dense.get("seeds", [0])
    if len(seeds) == 1:
        how = (
            "Every round below is compared with dense on the same images: the paired difference, its 95%"
            " interval (Wald, paired proportions), and an exact McNemar test. Accuracies carry Wilson intervals."
        )
    else:
        per = ", ".join(f"seed {s}: {a:.4f}" for s, a in dense["per_seed"].items())
        how = (
            f"Training seeds {', '.join(map(str, seeds))} ({per}). Accuracies are means ± sd over the seeds. Each"
            " round is paired with the dense net of its own seed on the same images; the table gives the mean of"
            " those differences with a t interval over seeds and a one-sample t-test, which cover the test-set"
            " sampling and the seed-to-seed spread together."
        )
    lines = [
        "## Accuracy evidence",
        "",
        f"Dense: test accuracy **{dense['acc']:.4f}** (95% interval {dense['low']:.4f}–{dense['high']:.4f}) on"
        f" {dense['n']} test images. {how}",
        "",
        f"A round **wins** when it is non-inferior to dense at margin {margin:g} with 95% confidence: the lower end"
        f" of its paired difference lies above −{margin:g}. The paper's own rule (accuracy at least dense's) is"
        " the second column; on one run it mostly measures luck, and is given for comparison with the paper.",
        "",
        "Each method's bracket: its sparsest winning round (the paper's extreme sparsity) and its least sparse losing round.",
        "",
        "| method | sparsest winning round | least sparse losing round | extreme sparsity, paper's rule |",
        "|---|---|---|---|",
    ]
    paper_rule = extreme_sparsity(table, "wins_paper")
    for method, (win, loss) in bracket(table).items():
        mixed = " (wins again above a loss: the rounds do not order cleanly)" if win is not None and loss is not None and win > loss else ""
        lines.append(
            f"| {method} | {_pct(win) if win is not None else 'none'}{mixed}"
            f" | {_pct(loss) if loss is not None else 'not reached within the rounds run'} |"
            f" {_pct(paper_rule[method]) if paper_rule[method] is not None else 'none'} |"
        )
    return lines + [""]


def matched_lines(pairs: pd.DataFrame, by: str, within: float) -> list[str]:
    """Markdown table of structlth.evidence.matched pairs (a - b), significant rows in bold p."""
    what = {"sparsity": "sparsity", "flops_saving": "FLOP saving"}[by]
    points = f"{within * 100:g} points"
    lines = [f"## Methods at matched {what} (within {points})", ""]
    if pairs.empty:
        return lines + [f"No two methods have rounds within {points} of {what}.", ""]
    lines += [
        "Paired on the same test images; Δ = first − second, with its 95% interval and p. An ordering is a result"
        " only where the interval excludes 0 and p < 0.05 (p in bold).",
        "",
        f"| first | {what} | acc | second | {what} | acc | Δ | 95% interval | p |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in pairs.iterrows():
        sig = (r["low"] > 0 or r["high"] < 0) and r["p"] < 0.05
        lines.append(
            f"| {r['a']} {r['round_a']} | {r['by_a']:.1%} | {r['acc_a']:.4f}"
            f" | {r['b']} {r['round_b']} | {r['by_b']:.1%} | {r['acc_b']:.4f} |"
            f" {r['diff']:+.2%} | [{r['low']:+.2%}, {r['high']:+.2%}] | {'**' + _p(r['p']) + '**' if sig else _p(r['p'])} |"
        )
    return lines + [""]


SOURCE_LABELS = {"omp": "one-shot magnitude (OMP)", "random": "random (RP)", "snip": "SNIP", "synflow": "SynFlow"}
SMOKE = (
    "**This is a smoke run** (`report.smoke: true`, configs/quick.yaml): a few thousand images and epochs, to check"
    " that every stage runs on this machine. No accuracy or speed figure below is evidence of anything."
)


def _aa_sentence(goals: dict, prefix: str) -> str:
    """How the A/A readings of a runtime spread over the bench stages ('' where none were read)."""
    if not goals.get(f"{prefix}aa_stages"):
        return ""
    return (
        f" The A/A readings of its {goals[f'{prefix}aa_stages']} bench stages: median {goals[f'{prefix}aa_median']:.1%},"
        f" largest {goals[f'{prefix}aa_largest']:.1%} ({goals[f'{prefix}aa_largest_stage']})."
    )


def markdown(
    table: pd.DataFrame,
    dense: dict,
    margin: float,
    heads: dict[str, str],
    goals: dict,
    batch: int,
    machine: str,
    paper_lines: list[str] = (),
    suspects: pd.DataFrame | None = None,
    matched_tables: list[list[str]] = (),
    smoke: bool = False,
) -> str:
    """report.md. table: summary rows with the evidence columns; dense: acc, low, high, n.
    smoke: a smoke run (report.smoke), announced first."""
    lines = [
        "# structlth report" + (" (smoke run)" if smoke else ""),
        "",
        *([SMOKE, ""] if smoke else []),
        CLAIMS,
        "",
        f"Time savings are verified against the masked model and measured at batch {batch} on {machine} (see bench.csv for every engine).",
        "",
        *evidence_lines(table, dense, margin),
        "## Headline (the sparsest winning ticket per method that was timed)",
        "",
    ]
    lines += [f"- **{m}**: {h}" for m, h in heads.items()] or ["- no winning ticket was timed"]
    lines += ["", f"## Speedup targets (batch {batch})", ""]
    if goals.get("timing_noise") is not None:
        lines += [
            f"Timing noise of this run: {goals['timing_noise']:.1%} — the largest of the A/A tests (each bench stage"
            " times the dense net against itself; imp's masked-dense engine runs the same work as the dense net)"
            " and the typical row's 95% half-width (± in the tables: the spread of the savings of the consecutive"
            " blocks of pairs it was timed in). A time saving counts only above it and its own ±: others show as `~0` in the tables."
            + _aa_sentence(goals, ""),
            "",
        ]
    if goals.get("ort_timing_noise") is not None:
        lines += [
            f"ONNX Runtime (CPU execution provider, same threads): timing noise {goals['ort_timing_noise']:.1%}, measured the same way."
            + _aa_sentence(goals, "ort_"),
            "",
        ]
    lines += [
        f"Measured on {machine}. The floors hold for a 2-core CPU; every CPU gives its own figures (instruction set,"
        " kernel block sizes), so a report states the machine beside them.",
        "",
        "| target | runtime | measured | goal | met |",
        "|---|---|---|---|---|",
    ]
    for prefix, runtime in (("", "PyTorch"), ("ort_", "ONNX Runtime")):
        noise = goals.get(f"{prefix}timing_noise") or 0.0
        for key, what, goal, ok, fmt in TARGET_ROWS:
            v = goals.get(prefix + key)
            if v is None and prefix:
                continue
            met = "n/a" if v is None else ("yes" if ok(v, noise) else "no")
            lines.append(f"| {what} | {runtime} | {'n/a' if v is None else fmt.format(v)} | {goal} | {met} |")
    if goals.get("kernel_channels_per_channel") is not None:
        lines += [
            "",
            f"In PyTorch, oneDNN's convs computed {goals['kernel_channels_per_channel']:.2f} output channels per channel the"
            " channel-wise tickets' slim convs carry: it pads each conv's outputs to its weight block (by instruction set"
            " and shape), and a padded channel costs what a kept one does (`kernel_channels` per layer in bench_layers.csv).",
        ]
    noise, ort_noise = goals.get("timing_noise") or 0.0, goals.get("ort_timing_noise") or 0.0
    if suspects is not None and len(suspects):
        lines += ["", "Rows whose time saving beats their FLOP saving (the physical limit) by more than the noise — not to be trusted:", ""]
        lines += [
            f"- {r['method']} {r['round']} batch {r['batch']} {r['engine']}: {r['time_saving']:.1%} time vs {r['flops_saving']:.1%} FLOPs"
            for _, r in suspects.iterrows()
        ]
    for method, rows in table.groupby("method", sort=False):
        source = rows["source"].dropna().iloc[0] if "source" in rows and rows["source"].notna().any() else None
        lines += [
            "",
            f"## {method}" + (f" (mask source: {SOURCE_LABELS[source]} at each IMP round's density)" if source else ""),
            "",
            f"| round | sparsity | source IMP sparsity | channel sparsity"
            f" | {'test acc' if len(dense.get('seeds', [0])) == 1 else 'test acc, mean ± sd'} [95%] | Δ vs dense [95%] | p | wins | ≥ dense"
            " | time saving | ONNX Runtime saving | FLOP saving | engine |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for _, r in rows.iterrows():
            src = "" if pd.isna(r["source_sparsity"]) else f"{r['source_sparsity']:.2%}"
            sp = f"{r['sparsity']:.2%}" + ("" if pd.isna(r["unaligned_sparsity"]) else f" ({r['unaligned_sparsity']:.2%} before align)")
            ts, ots = _saving(r["time_saving"], noise, r["time_ci95"]), _saving(r["ort_time_saving"], ort_noise, r["ort_time_ci95"])
            fs = "" if pd.isna(r["flops_saving"]) else f"{r['flops_saving']:.1%}"
            acc = f"{r['acc_mean']:.4f}" if len(dense.get("seeds", [0])) == 1 else f"{r['acc_mean']:.4f} ± {r['acc_sd']:.4f}"
            lines.append(
                f"| {r['round']} | {sp} | {src} | {r['channel_sparsity']:.2%} | {acc} [{r['acc_low']:.4f}, {r['acc_high']:.4f}] |"
                f" {r['diff_vs_dense']:+.2%} [{r['diff_low']:+.2%}, {r['diff_high']:+.2%}] | {_p(r['p_vs_dense'])} |"
                f" {'yes' if r['wins'] else 'no'} | {'yes' if r['wins_paper'] else 'no'} | {ts} | {ots} | {fs}"
                f" | {r['engine'] if isinstance(r['engine'], str) else ''} |"
            )
    lines.append("")
    for block in matched_tables:
        lines += block
    lines += [
        *paper_lines,
        "## Plots",
        "",
        "![accuracy](accuracy_vs_sparsity.png)",
        "",
        "![trade-off](accuracy_vs_time_saving.png)",
        "",
        "![time saving](time_saving_vs_sparsity.png)",
        "",
        "![masks](masks.png)",
        "",
    ]
    return "\n".join(lines)


def read_predictions(artifacts: Path, p, runs: list[tuple[str, str]]) -> tuple[dict, dict]:
    """Per-image results of every run in `runs` and of dense, per training seed: train.seed's
    from artifacts/<method>/<round>/, a replicate's from artifacts/seeds/seed<S>/<method>/<round>/.
    Returns ({seed: {(method, round): bool [N]}}, {seed: bool [N]}); every file must be on the
    same test images (their labels' digest), or an ArtifactError names the ones that are not."""
    correct, dense, digests = {}, {}, {}
    for seed in p.seeds:
        root = artifacts if seed == p.train.seed else artifacts / "seeds" / f"seed{seed}"
        correct[seed] = {}
        for m, r in [*runs, ("pretrain", "")]:
            c, meta = load_predictions(root / m / r / "predictions.safetensors")
            digests[str((root / m / r).relative_to(artifacts))] = meta.get("labels_digest")
            if m == "pretrain":
                dense[seed] = c.numpy()
            else:
                correct[seed][(m, r)] = c.numpy()
    first = digests["pretrain"]
    other = sorted(k for k, d in digests.items() if d != first)
    if other:
        raise ArtifactError(f"predictions of {', '.join(other)} are on another test set than pretrain's: rerun them (dvc repro)")
    return correct, dense


MATCH_WITHIN = 0.03  # two rounds are "matched" when their sparsity (or FLOP saving) differs by at most this


def write_reports(p, artifacts: Path, bench_dir: Path, out: Path) -> str:
    """Every report output from the rounds' artifacts and the bench stages' tables:
    out/{bench.csv, bench_layers.csv, summary.csv, matched.csv, report.md, headline.json, *.png}.
    p: validated Params. Returns report.md's text."""
    out.mkdir(parents=True, exist_ok=True)
    runs = [(m, r) for m in p.methods for r in p.rounds_of(m)]
    metrics = pd.DataFrame(
        [
            {"method": m, "round": r, **read_json(artifacts / m / r / "metrics.json"), "rows_remaining": rows_remaining(artifacts / m / r)}
            for m, r in runs
        ]
    )
    correct, dense_correct = read_predictions(artifacts, p, runs)
    acc, _, lo, hi = accuracy(dense_correct)
    dense = {
        "acc": acc,
        "low": lo,
        "high": hi,
        "n": len(dense_correct[p.train.seed]),
        "seeds": p.seeds,
        "per_seed": {s: float(c.mean()) for s, c in dense_correct.items()},
    }
    batch = max(p.bench.batch_sizes)
    benched = [(m, r) for m, r in runs if m not in p.chains or r in p.prune.ticket_rounds]  # dvc.yaml's bench stages
    bench, bench_layers = gather_bench(bench_dir, benched)
    bench.to_csv(out / "bench.csv", index=False, float_format="%.6g")
    bench_layers.to_csv(out / "bench_layers.csv", index=False, float_format="%.6g")
    table = versus_dense(summary(metrics, bench, batch), correct, dense_correct, p.report.tolerance)
    table.to_csv(out / "summary.csv", index=False, float_format="%.6g")
    pairs = {by: matched(table, correct, by, MATCH_WITHIN, p.methods) for by in ("sparsity", "flops_saving")}
    pd.concat([v.assign(by=k) for k, v in pairs.items()], ignore_index=True).to_csv(out / "matched.csv", index=False, float_format="%.6g")
    goals = targets(bench, batch) | {"kernel_channels_per_channel": kernel_channels_per_channel(bench, bench_layers, batch)}
    noise = goals["timing_noise"] or 0.0
    heads = headline(table, noise)
    refills = [m for m, spec in p.tickets.items() if spec.kind == "refill"]
    paper = paper_vs_run(table, dense["acc"], paper_table(p.data.dataset, p.model.arch, p.model.small_input_stem), refills, p.train.epochs)
    suspects = suspect_rows(bench[bench["engine"] != "masked_dense"], noise)
    machine = (
        f"{bench['machine'].iloc[0]}, {p.bench.threads} threads" if "machine" in bench and len(bench) else f"{p.bench.threads} CPU threads"
    )
    text = markdown(
        table,
        dense,
        p.report.tolerance,
        heads,
        goals,
        batch,
        machine,
        paper,
        suspects,
        [matched_lines(v, k, MATCH_WITHIN) for k, v in pairs.items()],
        p.report.smoke,
    )
    (out / "report.md").write_text(text)
    colors = method_colors(p.methods)
    plot_accuracy(table, dense, colors, out / "accuracy_vs_sparsity.png")
    plot_tradeoff(table, dense, colors, out / "accuracy_vs_time_saving.png", noise)
    plot_savings(table, colors, out / "time_saving_vs_sparsity.png", noise)
    last = p.prune.ticket_rounds[-1] if p.tickets else p.round_ids()[-1]
    pictured = ["imp", *(m for m in p.tickets if last in p.rounds_of(m))]
    masks = {m: load_tensors(artifacts / m / last / "mask.safetensors")[0] for m in pictured}
    layer = p.report.mask_layer or max(masks["imp"], key=lambda n: masks["imp"][n].numel())
    plot_masks({m: v[layer] for m, v in masks.items()}, layer, last, out / "masks.png")
    brackets = bracket(table)
    write_json(
        out / "headline.json",
        {
            "dense_test_acc": dense["acc"],
            "test_images": dense["n"],
            "extreme_sparsity": {m: w for m, (w, _) in brackets.items()},
            "first_loss_sparsity": {m: f for m, (_, f) in brackets.items()},
            "best_time_saving": {
                m: float(g["time_saving"].max()) for m, g in table.dropna(subset=["time_saving"]).groupby("method", sort=False)
            },
            "targets": goals,
        },
    )
    return text
