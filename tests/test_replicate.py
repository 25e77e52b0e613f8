"""Replicates: the whole run under another training seed, with finished units reused by identity."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest
import torch

from structlth.artifacts import load_tensors
from structlth.config import parse_params
from structlth.replicate import run_replicate, units
from structlth.report import write_reports
from structlth.rounds import load_predictions

pytestmark = pytest.mark.slow


def test_a_replicate_trains_every_unit_once_and_retrains_only_what_an_edit_touches(tmp_path, raw_params, data_dir):
    raw_params["replicates"] = {"seeds": [1]}
    raw_params["prune"].update(rounds={"round1": {"prev": "round0"}}, ticket_rounds=["round1"])
    raw_params["tickets"] = {k: raw_params["tickets"][k] for k in ("refill", "refill_plus")}
    params = parse_params(raw_params)
    out, cache, logs = tmp_path / "seed1", tmp_path / "cache", []
    first = run_replicate(params, 1, data_dir, out, cache, log=logs.append)
    methods = ["imp", "imp_channel", *params.tickets, *params.baselines]
    assert first["trained"] == first["units"] == len(units(params)) == 1 + 2 * 2 + len(params.tickets) + 2 * len(params.baselines)
    for m in methods:
        for r in params.rounds_of(m):
            assert (out / m / r / "predictions.safetensors").is_file() and not (out / m / r / "identity.txt").exists()
    assert load_tensors(out / "imp" / "round1" / "mask.safetensors")[1]["round"] == "imp/round1"
    art = tmp_path / "artifacts"  # train.seed's run in the pipeline's layout, the replicate beside it
    run_replicate(params, params.train.seed, data_dir, art, tmp_path / "cache0")
    dense_w, other_w = (load_tensors(d / "pretrain" / "weights.safetensors")[0] for d in (out, art))
    assert any(not torch.equal(dense_w[k], other_w[k]) for k in dense_w)  # the replicate's seed trains another net
    (art / "seeds").mkdir()
    shutil.copytree(out, art / "seeds" / "seed1")
    bench = tmp_path / "bench"
    for m in methods:
        for r in params.rounds_of(m):
            (bench / m / r).mkdir(parents=True)
            row = {
                "method": m,
                "round": r,
                "machine": "test",
                "runtime": "torch",
                "batch": 2,
                "engine": "slim",
                "t_dense_ms": 1.0,
                "time_saving": 0.1,
                "ci95": 0.01,
                "flops_saving": 0.2,
            }
            pd.DataFrame([row]).to_csv(bench / m / r / "timing.csv", index=False)
            pd.DataFrame([{"method": m, "round": r, "layer": "x"}]).to_csv(bench / m / r / "layers.csv", index=False)
    text = write_reports(params, art, bench, tmp_path / "reports")
    dense = [float(load_predictions(d / "pretrain" / "predictions.safetensors")[0].float().mean()) for d in (art, out)]
    assert f"Training seeds 0, 1 (seed 0: {dense[0]:.4f}, seed 1: {dense[1]:.4f})" in text
    assert "test acc, mean ± sd [95%]" in text
    summary = pd.read_csv(tmp_path / "reports" / "summary.csv")
    accs = [float(load_predictions(d / "refill" / "round1" / "predictions.safetensors")[0].float().mean()) for d in (art, out)]
    assert summary.loc[summary["method"] == "refill", "acc_mean"].item() == pytest.approx(sum(accs) / 2, abs=1e-6)

    again = run_replicate(params, 1, data_dir, out, cache)
    assert again["trained"] == 0 and again["test_acc"] == first["test_acc"]

    raw_params["tickets"]["refill_plus"]["refill_rate"] = 0.5
    logs.clear()
    third = run_replicate(parse_params(raw_params), 1, data_dir, out, cache, log=logs.append)
    assert third["trained"] == 1 and logs == ["seed 1: training refill_plus round1"]


def test_a_group_aware_chain_post_processes_every_round_and_reruns_only_what_an_edit_touches(tmp_path, raw_params, data_dir):
    """The paper's Alg. 4: each round of the chain is regrouped before rewinding, so the next
    round prunes block masks; finished rounds are reused by identity."""
    from helpers import is_block_mask
    from structlth.replicate import run_chain
    from structlth.rounds import setup
    from structlth.training import pretrain

    raw_params["group_chains"] = {"imp_regroup": {"ticket": "regroup"}}
    params = parse_params(raw_params)
    pretrain(setup(params, data_dir), tmp_path / "pretrain", None)
    out, cache, logs = tmp_path / "imp_regroup", tmp_path / "cache", []
    first = run_chain(params, "imp_regroup", data_dir, tmp_path / "pretrain", out, cache, log=logs.append)
    assert first["trained"] == first["units"] == 1 + len(params.round_ids())
    min_rows = params.tickets["regroup"].min_rows
    for rnd in params.round_ids():
        masks, meta = load_tensors(out / rnd / "mask.safetensors")
        assert meta["round"] == f"imp_regroup/{rnd}" and all(is_block_mask(m.bool(), min_rows) for m in masks.values())
    assert run_chain(params, "imp_regroup", data_dir, tmp_path / "pretrain", out, cache)["trained"] == 0
    raw_params["tickets"]["regroup"]["rows_per_part"] = 2
    logs.clear()
    again = run_chain(parse_params(raw_params), "imp_regroup", data_dir, tmp_path / "pretrain", out, cache, log=logs.append)
    assert again["trained"] == len(params.round_ids()) and logs == [f"imp_regroup: training {r}" for r in params.round_ids()]
