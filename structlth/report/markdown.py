"""report.md: the report's text from the gathered table and its claims."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import pandas as pd

from structlth.evidence import bracket
from structlth.paper import PLUS_EPOCHS
from structlth.report.claims import CHANNEL_FLOOR, GROUP_FLOOR, TARGET_ROWS, extreme_sparsity, inside_noise
from structlth.report.gather import round_key
from structlth.report.names import SOURCE_LABELS


def paper_sparsity(table: pd.DataFrame, refills: list[str]) -> pd.Series:
    """Each row's sparsity as the paper counts it: a refill-kind ticket's in whole refilled rows
    (1 - rows_remaining; ours also drops the weights that read dropped channels), any other's as is."""
    whole = table["rows_remaining"] if "rows_remaining" in table else pd.Series(float("nan"), index=table.index)
    return table["sparsity"].where(~(table["method"].isin(list(refills)) & whole.notna()), 1 - whole)


def paper_vs_run(table: pd.DataFrame, dense_acc: float, paper, refills: list[str] = (), epochs: int | None = None) -> list[str]:
    """Markdown lines: the paper's remaining weights and accuracy beside the run's, round by
    round, with differences in percentage points; then the extreme sparsity of both.
    paper: a structlth.paper.PaperTable, or None when the paper has no numbers for the setting.
    table: summary rows, with rows_remaining (whole rows: the paper's count for refill);
    refills: the run's refill-kind tickets (Fig. 4/5's channel-wise extreme is "Refill(+)", the
    better of refill and refill+); epochs: the run's schedule, checked against a (+) table's."""
    lines = ["## Paper vs this run", ""]
    counted = table.assign(paper_sparsity=paper_sparsity(table, refills))
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
            "Remaining weights are compared as the paper counts them: for refill-kind tickets, whole refilled rows (our"
            " own count also drops the weights that read from dropped channels, shown beside it).",
            "",
            "| method | round | paper remaining | run remaining (paper's count) | Δ (pp) | run remaining (ours)"
            " | paper acc | run acc | Δ (pp) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        run = {(r["method"], round_key(r["round"])): r for _, r in counted.iterrows()}
        for method, rounds in paper.rounds.items():
            for k, (rem, acc) in rounds.items():
                r = run.get((method, k))
                if r is None:
                    lines.append(f"| {method} | round{k} | {rem:.2f}% | – | – | – | {acc:.2f}% | – | – |")
                    continue
                ours_rem = 100 * (1 - r["sparsity"])
                like = 100 * (1 - r["paper_sparsity"])
                run_acc = 100 * r["test_acc"]
                lines.append(
                    f"| {method} | round{k} | {rem:.2f}% | {like:.2f}% | {like - rem:+.2f} | {ours_rem:.2f}%"
                    f" | {acc:.2f}% | {run_acc:.2f}% | {run_acc - acc:+.2f} |"
                )
        lines.append("")
    like = counted.assign(sparsity=counted["paper_sparsity"])
    ours, ours_paper = extreme_sparsity(like), extreme_sparsity(like, "wins_paper")
    if refills:  # Refill(+): the better of the refill-kind tickets
        best = [v for v in (ours.get(m) for m in refills) if v is not None]
        best_paper = [v for v in (ours_paper.get(m) for m in refills) if v is not None]
        ours["refill(+)"], ours_paper["refill(+)"] = max(best, default=None), max(best_paper, default=None)
        paper = replace(paper, extreme={("refill(+)" if k == "refill" else k): v for k, v in paper.extreme.items()})
    lines += [
        "Extreme sparsity, counted the paper's way (refill-kind tickets in whole rows):",
        "",
        f"| method | paper extreme sparsity ({paper.extreme_source}) | run: non-inferior | run: the paper's rule (≥ dense) |",
        "|---|---|---|---|",
    ]
    for method in sorted(set(paper.extreme) | set(ours)):
        pe, re_, rp = paper.extreme.get(method), ours.get(method), ours_paper.get(method)
        lines.append(
            f"| {method} | {'–' if pe is None else f'{pe:.0f}%'} | {'none wins' if re_ is None else f'{re_:.2%}'}"
            f" | {'none wins' if rp is None else f'{rp:.2%}'} |"
        )
    return lines + [""]


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
            " These cover the sampling of the test images for these trained nets; they do not cover training"
            " again with another seed, which one run cannot measure."
        )
    else:
        per = ", ".join(f"seed {s}: {a:.4f}" for s, a in dense["per_seed"].items())
        how = (
            f"Training seeds {', '.join(map(str, seeds))} ({per}). Accuracies are means ± sd over the seeds. Each"
            " round is paired with the dense net of its own seed on the same images; the table gives the mean of"
            " those differences. Its interval and t-test add two errors: the seeds' spread (variance of the"
            " per-seed means over the number of seeds) and the sampling of the test images, which every seed"
            " shares and which more seeds do not shrink (variance of the per-image means over the number of"
            " images), with Welch–Satterthwaite degrees of freedom."
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
        f"Multiplicity: each round's win is decided on its own at 95%, with no correction across the {len(table)}"
        " rounds of the table, so a bracket (a maximum over a method's rounds) leans optimistic. Beside each p,"
        " p (Holm) is adjusted by Holm's method across the whole table; the matched tables below bold only"
        " Holm-adjusted p < 0.05 within each table.",
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
        "Paired on the same test images; Δ = first − second, with its 95% interval, p, and p adjusted by Holm"
        f" across this table's {len(pairs)} comparisons. An ordering is a result only where the Holm-adjusted p"
        " < 0.05 (in bold).",
        "",
        f"| first | {what} | acc | second | {what} | acc | Δ | 95% interval | p | p (Holm) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for _, r in pairs.iterrows():
        holm = f"**{_p(r['p_holm'])}**" if r["p_holm"] < 0.05 else _p(r["p_holm"])
        lines.append(
            f"| {r['a']} {r['round_a']} | {r['by_a']:.1%} | {r['acc_a']:.4f}"
            f" | {r['b']} {r['round_b']} | {r['by_b']:.1%} | {r['acc_b']:.4f} |"
            f" {r['diff']:+.2%} | [{r['low']:+.2%}, {r['high']:+.2%}] | {_p(r['p'])} | {holm} |"
        )
    return lines + [""]


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


@dataclass(frozen=True)
class Report:
    """What report.md says. table: summary rows with the evidence columns; dense: acc, low, high,
    n (and seeds, per_seed); margin: report.tolerance; heads: `claims.headline`; goals:
    `claims.targets` (and kernel_channels_per_channel); batch: the bench batch the tables read;
    machine: where it was timed; paper_lines: `paper_vs_run`; suspects: `claims.suspect_rows`;
    matched_tables: `matched_lines` blocks; smoke: a smoke run (report.smoke), announced first;
    verdict: `claims.verdict`, the report's opening; names: `names.method_names`."""

    table: pd.DataFrame
    dense: dict
    margin: float
    heads: dict[str, str]
    goals: dict
    batch: int
    machine: str
    paper_lines: list[str] = field(default_factory=list)
    suspects: pd.DataFrame | None = None
    matched_tables: list[list[str]] = field(default_factory=list)
    smoke: bool = False
    verdict: list[str] = field(default_factory=list)
    names: dict[str, str] = field(default_factory=dict)


def markdown(r: Report) -> str:
    """report.md's text."""
    table, dense, margin, heads, goals, batch, machine = r.table, r.dense, r.margin, r.heads, r.goals, r.batch, r.machine
    paper_lines, suspects, matched_tables, smoke = r.paper_lines, r.suspects, r.matched_tables, r.smoke
    lines = [
        "# structlth report" + (" (smoke run)" if smoke else ""),
        "",
        *([SMOKE, ""] if smoke else []),
        *(["**Verdict**, from this run's own tests (the sections below give each one):", "", *r.verdict, ""] if r.verdict else []),
        CLAIMS,
        "",
        *(["Methods:", "", *(f"- `{m}`: {words}" for m, words in r.names.items()), ""] if r.names else []),
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
            f" | {'test acc' if len(dense.get('seeds', [0])) == 1 else 'test acc, mean ± sd'} [95%] | Δ vs dense [95%] | p | p (Holm)"
            " | wins | ≥ dense"
            " | time saving | ONNX Runtime saving | FLOP saving | engine |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for _, r in rows.iterrows():
            src = "" if pd.isna(r["source_sparsity"]) else f"{r['source_sparsity']:.2%}"
            sp = f"{r['sparsity']:.2%}" + ("" if pd.isna(r["unaligned_sparsity"]) else f" ({r['unaligned_sparsity']:.2%} before align)")
            ts, ots = _saving(r["time_saving"], noise, r["time_ci95"]), _saving(r["ort_time_saving"], ort_noise, r["ort_time_ci95"])
            fs = "" if pd.isna(r["flops_saving"]) else f"{r['flops_saving']:.1%}"
            acc = f"{r['acc_mean']:.4f}" if len(dense.get("seeds", [0])) == 1 else f"{r['acc_mean']:.4f} ± {r['acc_sd']:.4f}"
            lines.append(
                f"| {r['round']} | {sp} | {src} | {r['channel_sparsity']:.2%} | {acc} [{r['acc_low']:.4f}, {r['acc_high']:.4f}] |"
                f" {r['diff_vs_dense']:+.2%} [{r['diff_low']:+.2%}, {r['diff_high']:+.2%}] | {_p(r['p_vs_dense'])} | {_p(r['p_holm'])} |"
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
