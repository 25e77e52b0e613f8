"""Report tables: winners, headline, noise, the speedup measurements, paper vs run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from structlth.errors import ArtifactError
from structlth.evidence import versus_dense
from structlth.paper import paper_table
from structlth.report.claims import extreme_sparsity, headline, kernel_channels_per_channel, suspect_rows, targets
from structlth.report.gather import gather_bench, summary
from structlth.report.markdown import Report, markdown, paper_vs_run
from structlth.report.plots import method_colors
from structlth.speedup.measure import aa_readings, timing_noise

COLS = ["method", "round", "runtime", "batch", "engine", "t_dense_ms", "ci95", "time_saving", "flops_saving"]
NAN = float("nan")


def _bench(aa: float = 0.0, dense=(10.0,) * 10, ci=(NAN,) * 10) -> pd.DataFrame:
    """Ten PyTorch rows; dense: each row's dense time (ms), ci: each row's 95% half-width."""
    rows = [
        ("imp", "round1", 64, "masked_dense", aa, 0.2),
        ("imp", "round1", 64, "csr", -5.0, 0.2),
        ("imp", "round2", 64, "csr", -4.0, 0.4),
        ("refill", "round1", 64, "slim", 0.30, 0.5),
        ("refill", "round2", 64, "slim", 0.60, 0.6),
        ("refill", "round1", 1, "slim", 0.90, 0.5),  # another batch: ignored
        ("imp_channel", "round1", 64, "slim", 0.10, 0.3),  # under 40% FLOP saving: ignored
        ("regroup", "round1", 64, "slim+blocks", 0.05, 0.2),
        ("regroup", "round2", 64, "slim+blocks", 0.25, 0.4),
        ("regroup", "round2", 1, "slim+blocks", 0.50, 0.4),
    ]
    return pd.DataFrame([(m, r, "torch", b, e, d, c, t, f) for (m, r, b, e, t, f), d, c in zip(rows, dense, ci)], columns=COLS)


def _with_ort(bench: pd.DataFrame, aa: float, refill: tuple[float, float]) -> pd.DataFrame:
    """bench plus ONNX Runtime rows: imp's A/A and refill's two rounds at batch 64."""
    ort = [("imp", "round1", "onnxruntime", 64, "masked_dense", 10.0, NAN, aa, 0.2)]
    ort += [("refill", f"round{i + 1}", "onnxruntime", 64, "slim", 10.0, NAN, t, f) for i, (t, f) in enumerate(zip(refill, (0.5, 0.6)))]
    return pd.concat([bench, pd.DataFrame(ort, columns=COLS)], ignore_index=True)


def test_targets_follow_their_definitions():
    t = targets(_bench(), 64)
    assert t["channel_time_per_flop_saving"] == pytest.approx((0.6 + 1.0) / 2)  # median of 0.3/0.5, 0.6/0.6
    assert t["best_group_time_saving"] == pytest.approx(0.25)
    assert t["group_time_per_flop_saving"] == pytest.approx((0.25 + 0.625) / 2)
    assert t["timing_noise"] == pytest.approx(0.0)
    assert targets(_bench()[lambda d: d["engine"] == "csr"], 64)["best_group_time_saving"] is None
    won = targets(_bench(), 64, winning={("refill", "round1"), ("regroup", "round1")})  # a ticket that loses accuracy does not count
    assert won["channel_time_per_flop_saving"] == pytest.approx(0.6) and won["best_group_time_saving"] == pytest.approx(0.05)
    assert won["timing_noise"] == t["timing_noise"]  # the noise reads every stage


def test_the_verdict_opens_the_report_from_its_own_tests(raw_params):
    from structlth.config import parse_params
    from structlth.evidence import matched
    from structlth.report.claims import verdict
    from structlth.report.names import method_names

    table = _table()
    correct = {0: CORRECT}
    pairs = dict.fromkeys(
        ("sparsity", "flops_saving"), matched(table, correct, "sparsity", 0.3, ["refill", "imp"])
    )  # no baseline reads flops
    lines = verdict(table, pairs, ["refill"], [], 0.01, 0.0, "a test CPU")
    assert lines[0] == "- Kept dense accuracy (non-inferior within 1 point): refill to 20.0% sparsity, imp to 20.0% sparsity."
    assert lines[1] == "- Lost it: refill from 40.0%."
    assert lines[-1].startswith("- Speed (a test CPU; timing noise 0.0%), the sparsest winning ticket of each method: refill saves 30.0%")
    imp_channel = table.assign(method=table["method"].replace({"imp": "imp_channel"}))
    correct = {0: {(m.replace("imp", "imp_channel") if m == "imp" else m, r): v for (m, r), v in CORRECT.items()}}
    pairs = dict.fromkeys(("sparsity", "flops_saving"), matched(imp_channel, correct, "sparsity", 0.3, ["refill", "imp_channel"]))
    naive = verdict(imp_channel, pairs, ["refill"], [], 0.01, 0.0, "a test CPU")[2]
    # refill round1 is 10 images behind imp_channel round1 (exact McNemar p = 2 / 2**10), round2 60: Holm keeps both
    assert naive == "- Against naive channel pruning (imp_channel) at matched sparsity, Holm p < 0.05: refill behind in 2 of 2 pairs."
    tied = verdict(imp_channel, {k: v.assign(p_holm=0.2) for k, v in pairs.items()}, ["refill"], [], 0.01, 0.0, "a test CPU")[2]
    assert tied.endswith("refill tied in 2 of 2 pairs.")
    md = markdown(Report(table, DENSE_INFO, 0.01, {}, targets(_bench(), 64), 64, "a test CPU", verdict=lines, names={"refill": "x"}))
    assert lines[0] in md.splitlines()[:15]
    raw_params["baselines"]["tp_l1"].update(sparsity_reg=1e-4)
    raw_params["tickets"]["refill_plus"].update(readers="keep")
    names = method_names(parse_params(raw_params))
    assert names["tp_l1"] == (
        "Torch-Pruning, group L1, at refill's FLOPs, fine-tuned, its dense net trained with network slimming's L1 penalty on BN scales"
    )
    assert names["refill_plus"].startswith("whole channels refilled from the mask, plus")
    assert "keeping the BN of dropped channels and the weights that read them" in names["refill_plus"]
    assert "keeping" not in names["refill"]


def test_timing_noise_is_the_larger_of_aa_and_the_typical_rows_interval():
    assert timing_noise(_bench(aa=-0.07), 64) == pytest.approx(0.07)  # a negative A/A counts by size
    ci = (NAN, NAN, NAN, 0.02, 0.04, 0.5, 0.06, 0.08, 0.10, 0.5)  # batch 64 rows: median of 2..10% is 6%
    assert timing_noise(_bench(aa=0.02, ci=ci), 64) == pytest.approx(0.06)
    assert timing_noise(_bench(aa=0.25, ci=ci), 64) == pytest.approx(0.25)
    assert timing_noise(_bench(aa=0.02, ci=ci), 1) == pytest.approx(0.5)  # batch 1: its own rows, no A/A row
    drift = (10.0, 20.0, 30.0, 10.0, 15.0, 10.0, 25.0, 10.0, 30.0, 10.0)  # the machine's speed drifted between rows
    assert timing_noise(_bench(aa=0.02, dense=drift, ci=ci), 64) == pytest.approx(0.06)  # paired savings cancel it


def test_the_report_shows_how_the_aa_readings_spread_over_the_bench_stages():
    bench = _bench(aa=0.03)
    bench["aa_noise"] = [0.01, 0.01, 0.01, 0.01, 0.09, 0.2, 0.01, 0.01, 0.01, 0.01]  # refill round2 reads 9%; 20% at batch 1
    aa = aa_readings(bench, 64)
    assert aa.to_dict() == pytest.approx(
        {"imp round1": 0.03, "imp round2": 0.01, "imp_channel round1": 0.01, "refill round1": 0.01, "refill round2": 0.09}
        | {"regroup round1": 0.01, "regroup round2": 0.01}
    )  # one reading per stage: imp round1's masked-dense |saving| beats its A/A
    assert timing_noise(bench, 64) == pytest.approx(0.09)
    t = targets(bench, 64)
    assert (t["aa_stages"], t["aa_largest_stage"]) == (7, "refill round2") and t["ort_aa_stages"] == 0
    md = markdown(Report(_table(bench), DENSE_INFO, 0.01, {}, t, 64, "a test CPU"))
    assert "The A/A readings of its 7 bench stages: median 1.0%, largest 9.0% (refill round2)." in md


def test_suspect_rows_beat_their_flop_limit_by_more_than_the_noise():
    b = _bench()
    b.loc[b["method"] == "refill", "time_saving"] = [0.56, 0.60, 0.9]  # round1 at batch 64 beats 0.5 by 0.06
    assert suspect_rows(b[b["batch"] == 64], 0.05)["round"].tolist() == ["round1"]
    assert suspect_rows(b[b["batch"] == 64], 0.10).empty


def _metrics() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"method": "refill", "round": "round1", "sparsity": 0.2, "channel_sparsity": 0.2, "test_acc": 0.90, "source_sparsity": 0.2},
            {"method": "refill", "round": "round2", "sparsity": 0.4, "channel_sparsity": 0.4, "test_acc": 0.85, "source_sparsity": 0.36},
            {"method": "imp", "round": "round1", "sparsity": 0.2, "channel_sparsity": 0.0, "test_acc": 0.91},
        ]
    )


N = 1000
DENSE = np.arange(N) < 905  # per-image results of 1000 test images: dense gets the first 905 right
CORRECT = {("refill", "round1"): np.arange(N) < 900, ("refill", "round2"): np.arange(N) < 850, ("imp", "round1"): np.arange(N) < 910}
DENSE_INFO = {"acc": 0.905, "low": 0.886, "high": 0.921, "n": N, "seeds": [0]}


def _table(bench: pd.DataFrame | None = None, margin: float = 0.01) -> pd.DataFrame:
    """The summary of _metrics() with its evidence against DENSE (refill round1: 5 images worse,
    inside a 1-point margin; round2: 55 worse; imp round1: 5 better)."""
    return versus_dense(summary(_metrics(), _bench() if bench is None else bench, 64), {0: CORRECT}, {0: DENSE}, margin)


def test_summary_headline_and_markdown():
    table = _table()
    refill = table[table["method"] == "refill"]
    assert refill["time_saving"].tolist() == [0.30, 0.60]
    assert table.loc[table["method"] == "imp", "time_saving"].isna().all()  # no headline for unstructured imp
    assert table["method"].tolist() == ["refill", "refill", "imp"]  # the metrics' method order, rounds in chain order
    heads = headline(table)
    assert list(heads) == ["refill"]  # round2 loses: round1 is refill's sparsest winning ticket
    assert heads["refill"].startswith(
        "30.00% time saving at 20.00% sparsity (50.0% FLOP saving), round1: test acc 0.9000, -0.50% vs dense [-0.94%, -0.06%]"
    )
    assert headline(table, noise=0.35)["refill"].startswith("~0 (30.00%, inside the noise)")
    md = markdown(Report(table, DENSE_INFO, 0.01, heads, targets(_bench(), 64), 64, "a test CPU, 2 threads"))
    assert (
        "| channel-wise: time saving / FLOP saving (median, winning tickets with ≥ 40% FLOP saving) | PyTorch | 0.80 | ≥ 0.6 | yes |" in md
    )
    # Wilson 850/1000 and the paired Wald interval, computed by hand; p = 2 * 0.5**55
    assert (
        "| round2 | 40.00% | 36.00% | 40.00% | 0.8500 [0.8265, 0.8708] | -5.50% [-6.91%, -4.09%] | 5.6e-17 | 1.7e-16 | no | no"
        " | 60.0% |  | 60.0% | slim |" in md
    )
    assert "| refill | 20.00% | 40.00% | none |" in md  # its bracket: wins at 20%, loses at 40%
    assert "| imp | 20.00% | not reached within the rounds run | 20.00% |" in md
    noisy = markdown(Report(table, DENSE_INFO, 0.01, heads, {**targets(_bench(), 64), "timing_noise": 0.4}, 64, "a test CPU"))
    assert "| 0.062 | 0.125 | yes | no | ~0 (30.0%) |" in noisy  # refill round1: p = 2 * 0.5**5 = 0.0625; Holm: 2 * p
    with_ci = _table(_bench(ci=(NAN, NAN, NAN, 0.021, 0.034, NAN, NAN, NAN, NAN, NAN)))
    assert with_ci.loc[with_ci["method"] == "refill", "time_ci95"].tolist() == [0.021, 0.034]
    md = markdown(Report(with_ci, DENSE_INFO, 0.01, heads, {**targets(_bench(), 64), "timing_noise": 0.4}, 64, "a test CPU"))
    assert "| ~0 (30.0% ± 2.1%) |" in md and "| 60.0% ± 3.4% |" in md  # each saving beside its 95% half-width
    wide = _table(_bench(ci=(NAN, NAN, NAN, 0.35, 0.034, NAN, NAN, NAN, NAN, NAN)))
    assert "| ~0 (30.0% ± 35.0%) |" in markdown(Report(wide, DENSE_INFO, 0.01, heads, targets(_bench(), 64), 64, "a test CPU"))
    assert headline(wide)["refill"].startswith("~0 (30.00%, inside the noise)")  # inside its own interval


def test_extreme_sparsity_is_the_sparsest_winner_by_either_rule():
    table = _table()
    assert extreme_sparsity(table) == {"refill": 0.2, "imp": 0.2}
    assert extreme_sparsity(table, "wins_paper") == {"refill": None, "imp": 0.2}
    assert extreme_sparsity(_table(margin=0.005))["refill"] is None  # -0.5% with its interval is not within 0.5 points


def test_method_colors_are_fixed_by_params_order():
    colors = method_colors(["imp", "imp_channel", "refill"])
    assert colors == {"imp": "C0", "imp_channel": "C1", "refill": "C2"}


def test_paper_vs_run_on_a_tiny_fake_preset_run():
    """A fake RN-18 CIFAR-10 run: rows beside Tables A3/A4 with differences in points."""
    table = _table().assign(rows_remaining=0.85)
    lines = "\n".join(paper_vs_run(table, 0.905, paper_table("cifar10", "resnet18"), ["refill"], 160))
    assert "Tables A3/A4" in lines and "Not like for like" not in lines
    # run refill round1: 85.00% remaining counted in whole rows (the paper's count) vs the
    # paper's 80.29%, and 80.00% counted ours; 90.00% vs 94.14% accuracy
    assert "| refill | round1 | 80.29% | 85.00% | +4.71 | 80.00% | 94.14% | 90.00% | -4.14 |" in lines
    assert "| regroup | round1 | 80.00% | – | – | – | 94.48% | – | – |" in lines  # not in the run
    assert "| regroup | 78% | none wins | none wins |" in lines
    assert "| refill(+) | 50% | 15.00% | none wins |" in lines  # non-inferior at 15% in whole rows (20% ours), but below dense
    renamed = table.assign(method=table["method"].replace({"refill": "refill_b"}))  # any refill-kind ticket counts in whole rows
    assert "| refill(+) | 50% | 15.00% | none wins |" in "\n".join(
        paper_vs_run(renamed, 0.905, paper_table("cifar10", "resnet18"), ["refill_b"])
    )
    plus = "\n".join(paper_vs_run(table, 0.7, paper_table("cifar100", "vgg16"), [], 160))
    assert "Not like for like:** Table A5 is the paper's (+) setting (240 epochs" in plus and "trains 160 epochs" in plus
    assert "no table" in "\n".join(paper_vs_run(table, 0.905, paper_table("fashion_mnist", "resnet20")))
    assert paper_table("tiny_imagenet", "resnet50", small_input_stem=False) is None
    # a (+) table's extremes are its own schedule's; on 160 epochs they are Fig. 4/5's
    assert paper_table("cifar100", "wrn32_2", epochs=240).extreme == {"refill": 20.0, "regroup": 75.0}
    standard = paper_table("cifar100", "wrn32_2", epochs=160)
    assert standard.extreme == {"refill": 28.0, "regroup": 36.0} and standard.rounds == paper_table("cifar100", "wrn32_2").rounds
    assert paper_table("cifar100", "vgg16", epochs=240).extreme == {} and "(Fig. 4/5)" in "\n".join(
        paper_vs_run(table, 0.7, paper_table("cifar100", "vgg16", epochs=160), [], 160)
    )


def test_block_order_makes_blocks_contiguous():
    import torch

    from structlth.report.plots import block_order

    m = torch.zeros(8, 10, dtype=torch.bool)
    m[[0, 3, 5], :4] = True
    m[[1, 2, 6], 6:] = True
    m = m[:, torch.randperm(10, generator=torch.Generator().manual_seed(0))]
    rows, cols = block_order(m)
    p = m[rows][:, cols]
    assert bool(p[:3, :4].all()) and bool(p[3:6, 4:8].all()) and int(p.sum()) == 24
    assert sorted(rows.tolist()) == list(range(8)) and sorted(cols.tolist()) == list(range(10))


def test_onnxruntime_savings_sit_beside_pytorch_and_have_their_own_noise():
    bench = _with_ort(_bench(aa=0.01), aa=-0.12, refill=(0.40, 0.05))
    t = targets(bench, 64)
    assert t["timing_noise"] == pytest.approx(0.01) and t["ort_timing_noise"] == pytest.approx(0.12)
    assert t["best_group_time_saving"] == pytest.approx(0.25)  # unprefixed: PyTorch's
    assert t["ort_channel_time_per_flop_saving"] == pytest.approx((0.40 / 0.5 + 0.05 / 0.6) / 2)
    assert t["ort_best_group_time_saving"] is None  # no regroup row in ONNX Runtime
    table = _table(bench)
    refill = table[table["method"] == "refill"]
    assert refill["time_saving"].tolist() == [0.30, 0.60] and refill["ort_time_saving"].tolist() == [0.40, 0.05]
    md = markdown(Report(table, DENSE_INFO, 0.01, {}, t, 64, "a test CPU"))
    assert "| yes | no | 30.0% | 40.0% | 50.0% | slim |" in md
    assert (
        "| channel-wise: time saving / FLOP saving (median, winning tickets with ≥ 40% FLOP saving) | ONNX Runtime | 0.44 | ≥ 0.6 | no |"
        in md
    )
    assert "| group-wise: best regroup time saving | ONNX Runtime |" not in md  # nothing measured, no row
    assert "| no | no | 60.0% | ~0 (5.0%) | 60.0% | slim |" in md  # inside ORT's 12%
    assert "timing noise 12.0%" in md


def test_gather_bench_concatenates_stage_tables_and_names_a_missing_one(tmp_path):
    for rnd, saving in (("round1", 0.1), ("round2", 0.2)):
        d = tmp_path / "refill" / rnd
        d.mkdir(parents=True)
        pd.DataFrame([{"method": "refill", "round": rnd, "time_saving": saving}]).to_csv(d / "timing.csv", index=False)
        pd.DataFrame([{"method": "refill", "round": rnd, "layer": "conv"}]).to_csv(d / "layers.csv", index=False)
    timing, layers = gather_bench(tmp_path, [("refill", "round1"), ("refill", "round2")])
    assert timing["time_saving"].tolist() == [0.1, 0.2] and layers["round"].tolist() == ["round1", "round2"]
    with pytest.raises(ArtifactError, match=r"regroup/round1/timing.csv: missing; run the bench stage of regroup round1"):
        gather_bench(tmp_path, [("refill", "round1"), ("regroup", "round1")])
    (tmp_path / "refill" / "round2" / "timing.csv").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ArtifactError, match="not a bench table"):
        gather_bench(tmp_path, [("refill", "round2")])


def test_matched_lines_bold_only_what_holms_adjusted_p_supports():
    from structlth.report.markdown import matched_lines

    pairs = pd.DataFrame(
        [
            {
                "a": "refill",
                "round_a": "round4",
                "by_a": 0.77,
                "acc_a": 0.889,
                "b": "imp_channel",
                "round_b": "round7",
                "by_b": 0.77,
                "acc_b": 0.873,
                "diff": 0.0165,
                "low": 0.012,
                "high": 0.021,
                "p": 1e-12,
                "p_holm": 3e-12,
            },
            {
                "a": "regroup",
                "round_a": "round4",
                "by_a": 0.42,
                "acc_a": 0.880,
                "b": "imp_channel",
                "round_b": "round3",
                "by_b": 0.44,
                "acc_b": 0.884,
                "diff": 0.0043,
                "low": 0.0001,
                "high": 0.0085,
                "p": 0.051,
                "p_holm": 0.102,
            },
            {
                "a": "refill",
                "round_a": "round6",
                "by_a": 0.86,
                "acc_a": 0.885,
                "b": "imp_channel",
                "round_b": "round8",
                "by_b": 0.86,
                "acc_b": 0.878,
                "diff": 0.007,
                "low": 0.001,
                "high": 0.013,
                "p": 0.03,
                "p_holm": 0.06,
            },
        ]
    )
    text = "\n".join(matched_lines(pairs, "sparsity", 0.03))
    assert "## Methods at matched sparsity (within 3 points)" in text and "Holm across this table's 3 comparisons" in text
    assert "| 1e-12 | **3e-12** |" in text and "| 0.051 | 0.102 |" in text  # the second's interval excludes 0, its p does not
    assert "| 0.030 | 0.060 |" in text  # p < 0.05 alone, but not once the table's three tests are accounted for


def test_a_method_that_wins_again_above_a_loss_is_flagged():
    from structlth.report.markdown import evidence_lines

    table = _table()
    table.loc[table["method"] == "refill", "wins"] = [False, True]  # loses at 20%, wins at 40%
    text = "\n".join(evidence_lines(table, DENSE_INFO, 0.01))
    assert "| refill | 40.00% (wins again above a loss: the rounds do not order cleanly) | 20.00% |" in text


def test_the_report_says_how_many_channels_onednn_computed_per_kept_one_in_channel_wise_tickets():
    bench = _with_ort(_bench(), aa=0.0, refill=(0.4, 0.5))
    layer = ["method", "round", "runtime", "batch", "channels", "kernel_channels"]
    layers = pd.DataFrame(
        [
            ("refill", "round1", "torch", 64, 40, 64),
            ("refill", "round2", "torch", 64, 24, 32),
            ("refill", "round2", "torch", 64, 16, NAN),  # oneDNN ran no conv there: left out
            ("refill", "round1", "torch", 1, 40, 128),  # another batch
            ("refill", "round1", "onnxruntime", 64, 40, NAN),
            ("regroup", "round2", "torch", 64, 8, 64),  # a group-wise ticket
            ("imp", "round1", "torch", 64, 10, 16),
        ],
        columns=layer,
    )
    v = kernel_channels_per_channel(bench, layers, 64)
    assert v == pytest.approx((64 + 32) / (40 + 24))
    assert kernel_channels_per_channel(bench, layers.drop(columns="kernel_channels"), 64) is None
    md = markdown(Report(_table(bench), DENSE_INFO, 0.01, {}, targets(bench, 64) | {"kernel_channels_per_channel": v}, 64, "a test CPU"))
    assert "oneDNN's convs computed 1.50 output channels per channel the channel-wise tickets' slim convs carry" in md
    assert "oneDNN's convs computed" not in markdown(Report(_table(bench), DENSE_INFO, 0.01, {}, targets(bench, 64), 64, "a test CPU"))
