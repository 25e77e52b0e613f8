"""Report tables: winners, headline form, and the speedup targets computed from bench rows."""

from __future__ import annotations

import pandas as pd
import pytest

from structlth.report import headline, markdown, summary, targets


def _bench() -> pd.DataFrame:
    rows = [
        # method, round, batch, engine, time_saving, flops_saving
        ("imp", "round1", 64, "masked_dense", 0.00, 0.2),
        ("imp", "round1", 64, "csr", -5.0, 0.2),
        ("imp", "round2", 64, "csr", -4.0, 0.4),
        ("refill", "round1", 64, "slim", 0.30, 0.5),
        ("refill", "round2", 64, "slim", 0.60, 0.6),
        ("refill", "round1", 1, "slim", 0.90, 0.5),  # another batch: ignored
        ("imp_channel", "round1", 64, "slim", 0.10, 0.3),  # under 40% FLOP saving: ignored
        ("regroup", "round1", 64, "slim+blocks", 0.05, 0.2),
        ("regroup", "round1", 64, "subconv", 0.15, 0.2),
        ("regroup", "round2", 64, "slim+blocks", 0.25, 0.4),
    ]
    return pd.DataFrame(rows, columns=["method", "round", "batch", "engine", "time_saving", "flops_saving"])


def test_targets_follow_their_definitions():
    t = targets(_bench(), 64)
    assert t["channel_time_per_flop_saving"] == pytest.approx((0.6 + 1.0) / 2)  # median of 0.3/0.5, 0.6/0.6
    assert t["best_group_time_saving"] == pytest.approx(0.25)
    assert t["group_minus_csr_min"] == pytest.approx(min(0.15 - (-5.0), 0.25 - (-4.0)))
    assert t["timing_noise"] == pytest.approx(0.0)
    assert targets(_bench()[lambda d: d["engine"] == "csr"], 64)["best_group_time_saving"] is None


def test_summary_headline_and_markdown():
    metrics = pd.DataFrame([
        {"method": "refill", "round": "round1", "sparsity": 0.2, "channel_sparsity": 0.2, "test_acc": 0.90},
        {"method": "refill", "round": "round2", "sparsity": 0.4, "channel_sparsity": 0.4, "test_acc": 0.85},
    ])
    table = summary(metrics, _bench(), 64)
    assert table.set_index("round")["time_saving"].tolist() == [0.30, 0.60]
    heads = headline(table, dense_acc=0.905, tolerance=0.01)
    assert heads == {"refill": "30.00% time saving at 20.00% sparsity (test acc 0.9000)"}  # round2 loses
    md = markdown(table, 0.905, 0.01, heads, targets(_bench(), 64), 64, 2)
    assert "| channel-wise: time saving / FLOP saving (median, tickets with ≥ 40% FLOP saving) | 0.80 | ≥ 0.8 | yes |" in md
    assert "| round2 | 40.00% | 40.00% | 0.8500 | no | 60.0% | 60.0% | slim |" in md
