"""DVC stage: metrics + the bench stages' tables -> reports/{bench.csv, bench_layers.csv,
summary.csv, report.md, headline.json, *.png}."""

import argparse
from pathlib import Path

import pandas as pd

from structlth.artifacts import load_tensors, read_json, write_json
from structlth.config import load_params
from structlth.errors import user_errors
from structlth.paper import paper_table
from structlth.report import gather_bench, headline, markdown, paper_vs_run, plot_accuracy, plot_masks, plot_savings, summary, suspect_rows, targets

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--artifacts", required=True)
    ap.add_argument("--bench", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with user_errors():
        p = load_params(args.params)
        art, out = Path(args.artifacts), Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        methods = ["imp", "imp_channel", *p.tickets]
        rows = [{"method": m, "round": r, **read_json(art / m / r / "metrics.json")} for m in methods for r in p.rounds_of(m)]
        dense_acc = read_json(art / "pretrain" / "metrics.json")["test_acc"]
        batch = max(p.bench.batch_sizes)
        bench, bench_layers = gather_bench(Path(args.bench), [(m, r) for m in methods for r in p.rounds_of(m)])
        bench.to_csv(out / "bench.csv", index=False, float_format="%.6g")
        bench_layers.to_csv(out / "bench_layers.csv", index=False, float_format="%.6g")
        table = summary(pd.DataFrame(rows), bench, batch)
        table.to_csv(out / "summary.csv", index=False, float_format="%.6g")
        goals = targets(bench, batch)
        heads = headline(table, dense_acc, p.report.tolerance, goals["timing_noise"] or 0.0)
        paper = paper_vs_run(table, dense_acc, p.report.tolerance, paper_table(p.data.dataset, p.model.arch, p.model.small_input_stem))
        suspects = suspect_rows(bench[bench["engine"] != "masked_dense"], goals["timing_noise"] or 0.0)
        (out / "report.md").write_text(markdown(table, dense_acc, p.report.tolerance, heads, goals, batch, p.bench.threads, paper, suspects))
        plot_accuracy(table, dense_acc, out / "accuracy_vs_sparsity.png")
        plot_savings(table, out / "time_saving_vs_sparsity.png", goals["timing_noise"] or 0.0)
        last = p.rounds_of(next(iter(p.tickets), "imp"))[-1]
        pictured = ["imp", *(m for m in p.tickets if last in p.rounds_of(m))]
        masks = {m: load_tensors(art / m / last / "mask.safetensors")[0] for m in pictured}
        layer = p.report.mask_layer or max(masks["imp"], key=lambda n: masks["imp"][n].numel())
        plot_masks({m: v[layer] for m, v in masks.items()}, layer, last, out / "masks.png")
        best = {m: float(g["time_saving"].max()) for m, g in table.dropna(subset=["time_saving"]).groupby("method")}
        best_ort = {m: float(g["ort_time_saving"].max()) for m, g in table.dropna(subset=["ort_time_saving"]).groupby("method")}
        write_json(out / "headline.json", {"dense_test_acc": dense_acc, "best_time_saving": best, "best_ort_time_saving": best_ort, "winning": heads, "targets": goals})
        print((out / "report.md").read_text().split("## imp")[0])
