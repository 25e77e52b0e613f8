"""The report's inputs, gathered: every round's metrics and per-image results, and the bench
stages' tables, joined into one summary row per method x round."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from structlth.artifacts import load_tensors
from structlth.errors import ArtifactError
from structlth.evidence import EVIDENCE_COLS
from structlth.masks import row_density
from structlth.rounds import load_predictions
from structlth.speedup.measure import PRODUCTION_ENGINES

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
        .sort_values(["method", "round"], key=lambda s: s.map(round_key) if s.name == "round" else s.map(order))
        .reset_index(drop=True)
    )


def round_key(r: str) -> int:
    return int(str(r).removeprefix("round"))


def rows_remaining(round_dir: Path) -> float:
    """Remaining weights of a round counted in whole rows (masks.row_density)."""
    return row_density(load_tensors(round_dir / "mask.safetensors")[0])


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
