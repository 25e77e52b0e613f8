"""The report stage: gather every round's metrics, predictions and bench tables (gather), test
and claim (claims, structlth.evidence), draw (plots) and write (markdown) the report's outputs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from structlth.artifacts import load_tensors, read_json, write_json
from structlth.evidence import accuracy, bracket, matched, versus_dense
from structlth.paper import paper_table
from structlth.report.claims import MATCH_WITHIN, headline, kernel_channels_per_channel, suspect_rows, targets, verdict, winners
from structlth.report.gather import gather_bench, read_predictions, rows_remaining, summary
from structlth.report.markdown import Report, markdown, matched_lines, paper_vs_run
from structlth.report.names import method_names
from structlth.report.plots import method_colors, plot_accuracy, plot_masks, plot_savings, plot_tradeoff


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
    won = winners(table)
    winning = set(zip(won["method"], won["round"]))
    goals = targets(bench, batch, winning) | {"kernel_channels_per_channel": kernel_channels_per_channel(bench, bench_layers, batch)}
    noise = goals["timing_noise"] or 0.0
    heads = headline(table, noise)
    refills = [m for m, spec in p.tickets.items() if spec.kind == "refill"]
    paper = paper_vs_run(
        table, dense["acc"], paper_table(p.data.dataset, p.model.arch, p.model.small_input_stem, p.train.epochs), refills, p.train.epochs
    )
    suspects = suspect_rows(bench[bench["engine"] != "masked_dense"], noise)
    machine = (
        f"{bench['machine'].iloc[0]}, {p.bench.threads} threads" if "machine" in bench and len(bench) else f"{p.bench.threads} CPU threads"
    )
    text = markdown(
        Report(
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
            verdict(table, pairs, list(p.tickets), list(p.baselines), p.report.tolerance, noise, f"PyTorch, batch {batch}, {machine}"),
            method_names(p),
        )
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
            "best_winning_time_saving": {  # tickets that keep accuracy only
                m: float(g["time_saving"].max()) for m, g in winners(table).dropna(subset=["time_saving"]).groupby("method", sort=False)
            },
            "targets": goals,
        },
    )
    return text
