"""Every fast path equals the masked dense model; export round-trips."""

from __future__ import annotations

import copy
import functools
import json
import math
import os

import pandas as pd
import pytest
import torch
from torch import nn

from helpers import ROOT, STRUCTURE, randomised_model
from structlth.artifacts import load_tensors, save_tensors
from structlth.config import BenchParams
from structlth.errors import ArtifactError, VerificationError
from structlth.export import export_slim, load_slim
from structlth.masks import ones_masks
from structlth.pruning import channel_prune, magnitude_prune, parts_for, regroup
from structlth.speedup.choice import (
    ALIGN,
    ALIGN_MARGIN,
    ALIGNS,
    CHOICE_ALPHA,
    CHOICE_REPEATS,
    ENGINE_MARGIN,
    Probe,
    choose_alignment,
    choose_engines,
    fast_models,
    slim_masks,
)
from structlth.speedup.engines import (
    CsrConv,
    GroupedConv,
    SubConv,
    engine_candidates,
    masked_reference,
    round_up,
    row_groups,
    swap_convs,
)
from structlth.speedup.layout import FEEDER_GROWTH, absorb, feeders, fold_bn, fold_layouts, to_layout
from structlth.speedup.measure import bench_ticket
from structlth.speedup.onednn import conv_calls, dim_block, parse_convs
from structlth.speedup.slim import StreamAdd, add_segments, kept_channels, slim_model
from structlth.speedup.timing import Timing, machine_name, time_pair, verify


@pytest.mark.parametrize("arch, width", [("resnet20", 0.5), ("vgg16", 0.125), ("mobilenet_v1", 0.125), ("resnet18", 1.0)])
def test_slim_model_equals_masked_model_and_is_smaller(arch, width):
    m = randomised_model(arch, width)
    w = dict(m.named_parameters())
    masks = ones_masks(m)
    for _ in range(2):
        masks = channel_prune(w, masks, 0.4)
    ref = masked_reference(m, masks, 3)
    slim = slim_model(m, masks, 3)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(slim(x), ref(x), atol=1e-5, rtol=1e-4)
    assert sum(p.numel() for p in slim.parameters()) < 0.6 * sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("fmt", [torch.channels_last, torch.contiguous_format])
def test_a_sum_of_different_channel_sets_is_the_scatter_into_their_union_in_any_order(fmt):
    """b's channels first, in b's order, then a's others, in the inputs' memory format; the
    slices-and-concat form an ONNX export traces computes the same, and gradients flow."""
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        a = torch.randperm(12, generator=g)[: int(torch.randint(1, 12, (1,), generator=g))].tolist()
        b = torch.randperm(12, generator=g)[: int(torch.randint(1, 12, (1,), generator=g))].tolist()
        union, segments = add_segments(a, b)
        assert union[: len(b)] == b and sorted(union) == sorted(set(a) | set(b))
        xa = torch.randn(2, len(a), 3, 3).contiguous(memory_format=fmt)
        xb = torch.randn(2, len(b), 3, 3).contiguous(memory_format=fmt)
        pos = {c: i for i, c in enumerate(union)}
        want = torch.zeros(2, len(union), 3, 3)
        want[:, [pos[c] for c in a]] += xa
        want[:, [pos[c] for c in b]] += xb
        add = StreamAdd(segments)
        got = add(xa, xb)
        assert torch.allclose(got, want)
        assert got.is_contiguous(memory_format=fmt) or max(len(a), len(b)) == 1  # one channel: either format
        assert torch.allclose(torch.cat([add._stretch(xa, xb, *s) for s in segments], 1), want)
        xa.requires_grad_(True)  # a slim net being fine-tuned: the sum is differentiable
        add(xa, xb).sum().backward()
        assert torch.equal(xa.grad, torch.ones_like(xa))


def test_residual_streams_are_ordered_so_each_block_joins_in_few_stretches():
    """Planned channel orders (slim.channel_orders): a ResNet-18 block's conv writes the channels
    it shares with the stream in at most 2 stretches (sorted orders need 14-87 here)."""
    m = randomised_model("resnet18", 1.0)
    w = dict(m.named_parameters())
    masks = ones_masks(m)
    for _ in range(2):
        masks = channel_prune(w, masks, 0.4)
    slim = slim_model(m, masks, 3, align=8)
    shared = [sum(sb is not None and sa is not None for sb, sa, _ in mod.segments) for mod in slim.modules() if isinstance(mod, StreamAdd)]
    assert len(shared) == 8 and max(shared) <= 2
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        assert torch.allclose(slim(x), masked_reference(m, masks, 3)(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("engine", [GroupedConv, SubConv, CsrConv])
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("bias", [False, True])
def test_conv_engines_equal_masked_conv(engine, stride, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 32, 3, stride, 1, bias=bias)
    mask = regroup(torch.rand(32, 16, 3, 3) < 0.3, parts=2, min_rows=4, t2=0.3, b2=4)
    mask[5] = False  # a dead row: exactly 0 (a dead channel's folded BN has zero shift)
    if bias:
        conv.bias.data[5] = 0
    x = torch.randn(3, 16, 9, 9)
    with torch.no_grad():
        want = nn.functional.conv2d(x, conv.weight * mask, conv.bias, stride=stride, padding=1)
        got = engine(conv, mask)(x)
    assert torch.allclose(got, want, atol=1e-5)


def test_grouped_conv_is_one_padded_grouped_conv():
    """Two blocks of 3 and 5 rows over 2 and 6 input channels: one conv with groups=2, rows and
    inputs padded to the alignment, the padded rows exactly zero."""
    conv = nn.Conv2d(8, 10, 3, padding=1, bias=False)
    mask = torch.zeros(10, 8, 3, 3, dtype=torch.bool)
    mask[[0, 4, 9], 0:2] = True
    mask[[1, 2, 3, 5, 6]] = True
    mask[[1, 2, 3, 5, 6], 6:] = False  # channels 0..5
    g = GroupedConv(conv, mask, align=4)
    assert g.conv.groups == 2 and g.conv.out_channels == 2 * 8 and g.conv.in_channels == 2 * 8
    assert g.layout.tolist() == [0, 4, 9, -1, -1, -1, -1, -1, 1, 2, 3, 5, 6, -1, -1, -1]
    g.restore = False
    with torch.no_grad():
        y = g(torch.randn(2, 8, 5, 5))
    assert bool((y[:, g.layout < 0] == 0).all())


def _vgg_blocks(width: float = 0.25):
    """A randomised VGG-16 whose masks are whole-channel blocks: 2 blocks per layer."""
    m = randomised_model("vgg16", width)
    masks = {}
    for n, v in ones_masks(m).items():
        rows, cols = v.shape[:2]
        blk = torch.zeros_like(v)
        blk[: rows // 2, : cols // 2] = True
        blk[rows // 2 :, cols // 4 :] = True
        masks[n] = blk[torch.randperm(rows)]  # blocks interleaved in channel order
    return m, masks


def test_fold_layouts_hands_block_order_on_and_equals_the_masked_model():
    m, masks = _vgg_blocks()
    ref = masked_reference(m, masks, 3)
    fast = fold_layouts(swap_convs(fold_bn(ref), masks, {n.removesuffix(".weight"): "grouped" for n in masks}))
    grouped = [mod for mod in fast.modules() if isinstance(mod, GroupedConv)]
    assert len(grouped) == len(masks)
    assert all(not g.restore for g in grouped)  # every block order was handed on
    reorders = [n for n, _ in fast.named_modules() if n.startswith("reorder_")]
    assert len(reorders) == 1  # only before the pooling head's flatten
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fast(x), ref(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("arch", ["vgg16", "resnet20"])
def test_disjoint_blocks_lose_their_gather_to_a_plain_feeder(arch):
    """A grouped conv fed by a dense conv reads its input ready gathered (the feeder emits its
    rows in gather order) exactly when its gather is at most FEEDER_GROWTH x its input channels:
    always for disjoint blocks, not for overlapping blocks that repeat channels. Both equal the
    masked model."""
    m = randomised_model(arch, 0.25 if arch == "vgg16" else 1.0)  # >= 16 channels: 2 blocks of >= 8 (ALIGN) inputs
    imp = magnitude_prune(dict(m.named_parameters()), ones_masks(m), 0.7)
    x = torch.randn(3, 3, 32, 32)
    for inputs, parts in (("disjoint", 2), ("overlap", 4)):
        masks = {
            n: regroup(v, parts=parts, min_rows=2, granularity="channel", column_rule="budget", inputs=inputs) if v.shape[0] >= 16 else v
            for n, v in imp.items()
        }
        ref = masked_reference(m, masks, 3)
        folded = fold_bn(ref)
        feeds, order = feeders(folded), list(dict(folded.named_modules()))
        grouped = []
        for n in sorted(masks, key=lambda n: order.index(n.removesuffix(".weight"))):  # a feeder comes first
            feeder = feeds.get(n.removesuffix(".weight"))
            if feeder and f"{feeder}.weight" not in grouped and masks[n].flatten(1).any(1).sum() >= 16:
                grouped.append(n)
        originals = dict(folded.named_modules())
        short = [
            len(GroupedConv(originals[n.removesuffix(".weight")], masks[n].bool()).gather) <= FEEDER_GROWTH * masks[n].shape[1]
            for n in grouped
        ]
        fast = fold_layouts(swap_convs(folded, masks, {n.removesuffix(".weight"): "grouped" if n in grouped else "dense" for n in masks}))
        mods = dict(fast.named_modules())
        assert [mods[n.removesuffix(".weight")].skip_gather for n in grouped] == short
        assert all(short) if inputs == "disjoint" else not all(short)
        for n in grouped if inputs == "disjoint" else ():
            g, feeder = mods[n.removesuffix(".weight")], mods[feeds[n.removesuffix(".weight")]]
            assert feeder.out_channels == feeder.weight.shape[0] == g.conv.in_channels == len(g.gather)
        with torch.no_grad():
            assert torch.allclose(fast(x), ref(x), atol=1e-4, rtol=1e-4)


def test_fold_bn_equals_the_unfolded_model_and_removes_every_bn():
    m = randomised_model("resnet20", 0.5, in_ch=1)
    folded = fold_bn(m)
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in folded.modules())
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(folded(x), m(x), atol=1e-4, rtol=1e-4)


PRESET_ARCHS = sorted({"resnet20", "wrn32_2", "vgg16", "mobilenet_v1", "resnet18", "resnet50"})


@functools.cache
def _preset_net(arch: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A randomised preset net and its global magnitude masks at 60% sparsity, made once per
    architecture for the three kinds (a ResNet-50 takes seconds to build and seconds to sort)."""
    m = randomised_model(arch, 1.0 if arch.startswith("resnet") and arch != "resnet20" else 0.25)
    return m, magnitude_prune(dict(m.named_parameters()), ones_masks(m), 0.6)


def _alignments_in_turn(model: nn.Module, *_) -> dict[str, int]:
    """Each plain conv padded to the next of ALIGNS, in module order (net_alignment's arguments
    accepted, so it can stand in for it)."""
    plain = [n for n, mod in _convs(model).items() if mod.groups == 1]
    return {n: ALIGNS[i % len(ALIGNS)] for i, n in enumerate(plain)}


@pytest.mark.parametrize("arch", PRESET_ARCHS)
@pytest.mark.parametrize("kind", ["imp", "imp_channel", "regroup"])
def test_every_preset_architecture_goes_through_the_bench_path(monkeypatch, arch, kind):
    """Depthwise and grouped convs take the dense or slim path; every engine is verified. The
    slim nets pad their plain convs to ALIGNS in turn instead of racing alignments (timings pick
    one at random here, and its race is most of a ResNet-50's time): every multiple is verified
    on every architecture."""
    monkeypatch.setattr("structlth.speedup.choice.net_alignment", _alignments_in_turn)
    net, imp_masks = _preset_net(arch)
    m, masks = copy.deepcopy(net), {n: v.clone() for n, v in imp_masks.items()}
    if kind == "imp_channel":
        masks = channel_prune(dict(m.named_parameters()), ones_masks(m), 0.5)
    if kind == "regroup":
        # 64 rows per part (the default's) and the pipeline's pin budget: blocks in every layer it regroups, in seconds
        masks = {
            n: regroup(v, parts=parts_for(v.shape[0], 64), min_rows=4, t2=0.3, b2=2, granularity="channel", max_pins=50_000)
            if v.shape[0] <= 128  # wider layers stay unstructured: the dense engine's path, at a fraction of the partitioning
            else v
            for n, v in masks.items()
        }
    metrics = {"flops": 1, "flops_dense": 2, "params_kept": 10, "sparsity": 0.6, "test_acc": 0.9}
    rows, _ = bench_ticket(
        kind,
        STRUCTURE[kind],
        m,
        masks,
        metrics,
        torch.randn(2, 3, 16, 16),
        BenchParams(batch_sizes=[2], repeats=1, warmup=0, atol=1e-4, onnxruntime=False, choice_repeats=1),
        layers=False,
    )
    assert {r["engine"] for r in rows} == {"imp": {"masked_dense", "csr"}, "imp_channel": {"slim"}, "regroup": {"slim+blocks"}}[kind]


def test_row_groups_partition_live_rows_by_pattern():
    mask = torch.zeros(6, 2, 1, 1, dtype=torch.bool)
    mask[[0, 3], 0] = True
    mask[[1, 4], 1] = True
    groups = row_groups(mask)
    assert [g.tolist() for g in groups] == [[0, 3], [1, 4]]


def test_verify_rejects_a_wrong_fast_path():
    ref = nn.Linear(4, 3)
    wrong = nn.Linear(4, 3)
    with pytest.raises(VerificationError, match="differs from the masked model"):
        verify(ref, wrong, torch.randn(5, 4), 1e-3, "test")


def _bench_case(kind: str):
    m = randomised_model("resnet20", 0.25, in_ch=1)
    w = dict(m.named_parameters())
    masks = magnitude_prune(w, ones_masks(m), 0.5)
    if kind == "imp_channel":
        masks = channel_prune(w, ones_masks(m), 0.5)
    if kind == "regroup":
        masks = {n: regroup(v, parts=parts_for(v.shape[0], 4), min_rows=2, t2=0.3, b2=2) for n, v in masks.items()}
    metrics = {"flops": 1, "flops_dense": 4, "params_kept": 10, "sparsity": 0.5, "test_acc": 0.9}
    return m, masks, metrics


@pytest.mark.parametrize("kind", ["imp", "imp_channel", "regroup"])
def test_bench_ticket_rows_are_verified(monkeypatch, kind):
    monkeypatch.setattr("structlth.speedup.choice.net_alignment", _alignments_in_turn)  # rows, not the race
    m, masks, metrics = _bench_case(kind)
    rows, layers = bench_ticket(
        kind,
        STRUCTURE[kind],
        m,
        masks,
        metrics,
        torch.randn(4, 1, 28, 28),
        BenchParams(batch_sizes=[1, 4], repeats=1, warmup=0, choice_repeats=1),
        layers=True,
    )
    engines = {"imp": {"masked_dense", "csr"}, "imp_channel": {"slim"}, "regroup": {"slim+blocks"}}[kind]
    for b in (1, 4):
        assert {r["engine"] for r in rows if r["batch"] == b and r["runtime"] == "torch"} == engines
        assert {r["engine"] for r in rows if r["batch"] == b and r["runtime"] == "onnxruntime"} == engines - {"csr"}
    assert all(r["flops_saving"] == 0.75 for r in rows)  # 1 - flops / flops_dense
    assert {r["layer"] for r in layers} >= {"conv1", "layers.0.conv1"} and {r["batch"] for r in layers} == {4}
    if kind == "imp_channel" and torch.backends.mkldnn.is_available():  # oneDNN's computed outputs, PyTorch rows only
        slim = [r for r in layers if r["runtime"] == "torch" and r["engine"] == "Conv2d"]
        assert slim and all(r["kernel_channels"] >= r["channels"] for r in slim)
        assert all(r["kernel_channels"] is None for r in layers if r["runtime"] == "onnxruntime")


@pytest.mark.parametrize("runtime", [True, False])
def test_bench_ticket_refuses_a_fast_model_that_computes_something_else(monkeypatch, runtime):
    m, masks, metrics = _bench_case("imp_channel")
    broken = copy.deepcopy(m)
    broken.fc.bias.data += 1.0  # every logit off by one

    monkeypatch.setattr(
        "structlth.speedup.measure.fast_models_and_formats",
        lambda structure, model, masks, in_ch, probe, dead_bn: {"slim": (broken, probe.memory_format)},
    )
    with pytest.raises(VerificationError, match=r"imp_channel slim \(torch\): fast path differs"):
        bench_ticket(
            "imp_channel",
            "channel",
            m,
            masks,
            metrics,
            torch.randn(4, 1, 28, 28),
            BenchParams(batch_sizes=[4], repeats=1, warmup=0, onnxruntime=runtime),
            layers=False,
        )


def test_export_round_trip_reproduces_outputs(tmp_path):
    m = randomised_model("resnet20", 0.5, in_ch=1)
    masks = channel_prune(dict(m.named_parameters()), ones_masks(m), 0.5)
    arch = {"arch": "resnet20", "width": 0.5, "in_channels": 1, "num_classes": 10, "small_input_stem": True, "mean": [0.3], "std": [0.3]}
    slim = export_slim(m, masks, arch, tmp_path)
    loaded = load_slim(tmp_path)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), slim(x))
        assert torch.allclose(loaded(x), masked_reference(m, masks, 1)(x), atol=1e-5)
    assert torch.allclose(loaded.normalize(torch.full((1, 1, 2, 2), 0.6)), torch.ones(1, 1, 2, 2))


def test_a_loaded_slim_model_prints_its_input_and_channels_not_fx_code(tmp_path):
    m = randomised_model("resnet20", 0.5, in_ch=1)
    masks = channel_prune(dict(m.named_parameters()), ones_masks(m), 0.5)
    arch = {"arch": "resnet20", "width": 0.5, "in_channels": 1, "num_classes": 10, "small_input_stem": True, "mean": [0.3], "std": [0.3]}
    export_slim(m, masks, arch, tmp_path)
    text = repr(load_slim(tmp_path))
    assert "def forward" not in text and len(text.splitlines()) < 40
    assert "mean [0.3]) / std [0.3]" in text
    assert text.splitlines()[3] == "    conv1: 8 / 8"  # model order; the stem keeps its channels
    assert "    layers.7.conv1: 16 / 32" in text  # half of 32 kept (counts padded to multiples of 8)


def test_load_slim_refuses_an_export_of_another_format(tmp_path):
    """A structlth-slim-1 export kept its channels sorted: loaded as today's order it would run, permuted."""
    m = randomised_model("resnet20", 0.5, in_ch=1)
    masks = channel_prune(dict(m.named_parameters()), ones_masks(m), 0.5)
    arch = {"arch": "resnet20", "width": 0.5, "in_channels": 1, "num_classes": 10, "small_input_stem": True, "mean": [0.3], "std": [0.3]}
    export_slim(m, masks, arch, tmp_path)
    spec = json.loads((tmp_path / "architecture.json").read_text())
    (tmp_path / "architecture.json").write_text(json.dumps({**spec, "format": "structlth-slim-1"}))
    with pytest.raises(ArtifactError, match="not a structlth-slim-2 export"):
        load_slim(tmp_path)


def test_export_refuses_unstructured_tickets(tmp_path):
    m = randomised_model("resnet20", 0.25, in_ch=1)
    masks = magnitude_prune(dict(m.named_parameters()), ones_masks(m), 0.5)
    with pytest.raises(ArtifactError, match="not channel-wise"):
        export_slim(m, masks, {"in_channels": 1}, tmp_path)


def test_slim_pads_channel_counts_with_dead_channels_and_stays_exact():
    m = randomised_model("vgg16", 0.25)
    masks = channel_prune(dict(m.named_parameters()), ones_masks(m), 0.4)
    plain, padded = slim_model(m, masks, 3), slim_model(m, masks, 3, align=8)
    widths = [mod.out_channels for mod in padded.modules() if isinstance(mod, nn.Conv2d)]
    full = [mod.out_channels for mod in m.modules() if isinstance(mod, nn.Conv2d)]
    assert all(w % 8 == 0 or w == f for w, f in zip(widths, full))
    assert any(w % 8 for w in (mod.out_channels for mod in plain.modules() if isinstance(mod, nn.Conv2d)))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(padded(x), masked_reference(m, masks, 3)(x), atol=1e-5, rtol=1e-4)


def _convs(m: nn.Module) -> dict[str, nn.Conv2d]:
    return {n: mod for n, mod in m.named_modules() if isinstance(mod, nn.Conv2d)}


def test_per_layer_alignment_pads_each_conv_to_its_own_multiple_and_stays_exact():
    m = randomised_model("vgg16", 0.25)
    masks = channel_prune(dict(m.named_parameters()), ones_masks(m), 0.4)
    live, full = kept_channels(m, masks, 3), _convs(m)
    align = _alignments_in_turn(m)
    slim = _convs(slim_model(m, masks, 3, align))
    assert {n: c.out_channels for n, c in slim.items()} == {n: min(full[n].out_channels, round_up(len(live[n]), align[n])) for n in full}
    assert len({c.out_channels % 16 for c in slim.values()}) > 1  # the multiples differ by layer
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fold_bn(slim_model(m, masks, 3, align))(x), masked_reference(m, masks, 3)(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("fast_counts, expect", [(32, "multiple of 32"), (None, "all ALIGN")])
def test_alignment_is_the_fastest_padded_count_per_layer(monkeypatch, fast_counts, expect):
    """Timings faked: a conv whose output count is a multiple of 32 runs in half the time."""
    m = randomised_model("vgg16", 0.25)
    masks = channel_prune(dict(m.named_parameters()), ones_masks(m), 0.4)

    def fake(dense, fast, x, *a, **k):
        fast_enough = fast_counts and fast.out_channels % fast_counts == 0
        return Timing(1.0, 0.5 if fast_enough else 1.0 - 0.5 * 0.03)  # else within ALIGN_MARGIN: not worth its zero channels

    monkeypatch.setattr("structlth.speedup.choice.time_pair", fake)
    choice = choose_alignment(m, masks, 3, Probe(torch.randn(2, 3, 32, 32), repeats=1, warmup=0))
    live, full = kept_channels(m, masks, 3), _convs(m)
    assert set(choice) == set(full) and set(choice.values()) <= set(ALIGNS)
    for n, a in choice.items():
        counts = [min(full[n].out_channels, round_up(len(live[n]), b)) for b in ALIGNS]
        if expect == "all ALIGN" or counts[0] % 32 == 0 or all(c % 32 for c in counts):
            assert a == ALIGN, n
        else:  # the smallest multiple reaching the first count that is a multiple of 32
            assert a == ALIGNS[next(i for i, c in enumerate(counts) if c % 32 == 0)], n
    if expect == "multiple of 32":
        assert set(choice.values()) != {ALIGN}  # some layer did pad wider


@pytest.mark.parametrize("net_at_16", [0.5, 1 - ALIGN_MARGIN / 2])
def test_one_multiple_for_every_conv_wins_where_the_whole_net_runs_faster(monkeypatch, net_at_16):
    """Timings faked: each conv alone runs as fast at any count (so per layer every conv keeps
    ALIGN), while a whole net whose convs are all multiples of 16 runs in `net_at_16` of the
    time. The slim net is built at 16 everywhere only where that beats the margin."""
    m = randomised_model("vgg16", 0.25)
    masks = channel_prune(dict(m.named_parameters()), ones_masks(m), 0.4)

    def seconds(model):
        if isinstance(model, nn.Conv2d):
            return 1.0
        return net_at_16 if all(c.out_channels % 16 == 0 for c in _convs(model).values()) else 1.0

    monkeypatch.setattr("structlth.speedup.choice.time_pair", lambda dense, fast, *a, **k: Timing(seconds(dense), seconds(fast)))
    slim = _convs(fast_models("channel", m, masks, 3, Probe(torch.randn(2, 3, 32, 32), repeats=1, warmup=0))["slim"])
    live, full = kept_channels(m, masks, 3), _convs(m)
    at = 16 if net_at_16 < 1 - ALIGN_MARGIN else ALIGN
    assert {n: c.out_channels for n, c in slim.items()} == {n: min(full[n].out_channels, round_up(len(live[n]), at)) for n in full}
    assert any(round_up(len(live[n]), ALIGN) % 16 for n in full)  # the two alignments differ somewhere


@pytest.mark.parametrize(
    "ratios, expect",
    [
        ({"GroupedConv": 0.5, "SubConv": 0.7}, "grouped"),
        ({"GroupedConv": 0.8, "SubConv": 0.6}, "subconv"),
        ({"GroupedConv": 1 - ENGINE_MARGIN / 2, "SubConv": 1.2}, "dense"),  # a tie within the margin keeps the dense conv
        ({"GroupedConv": 0.6, "SubConv": 0.6 * (1 - ENGINE_MARGIN / 2)}, "grouped"),  # and the grouped conv against sub-convs
        ({"GroupedConv": 0.6, "SubConv": 0.6 * (1 - 2 * ENGINE_MARGIN)}, "subconv"),
    ],
)
def test_each_conv_takes_the_fastest_engine_only_when_it_beats_the_one_before_by_the_margin(monkeypatch, ratios, expect):
    """Timings faked: each engine runs its conv in a fixed fraction of the dense conv's time (and
    so does the dense conv reading a grouped feeder's block order)."""
    m, masks, _ = _bench_case("regroup")
    ratios = {"Conv2d": 1.0, **ratios}
    monkeypatch.setattr("structlth.speedup.choice.time_pair", lambda dense, fast, *a, **k: Timing(1.0, ratios[type(_timed(fast)).__name__]))
    slim = fold_bn(slim_model(m, masks, 1))
    plain = slim_masks(m, masks, 1)
    choice = choose_engines(slim, plain, Probe(torch.randn(2, 1, 28, 28), repeats=1, warmup=0))
    assert len(choice) > 10 and set(choice) == {n.removesuffix(".weight") for n in plain}
    blocked = {n for n in choice if len(engine_candidates(plain[n + ".weight"])) > 1}
    assert blocked and all(choice[n] == expect for n in blocked) and all(choice[n] == "dense" for n in set(choice) - blocked)


def _timed(fast: nn.Module) -> nn.Module:
    """The conv engine a choice times: a one-layer Sequential (a block engine) or the conv itself."""
    return fast[0] if isinstance(fast, nn.Sequential) else fast


def test_a_plain_conv_reads_a_grouped_convs_block_order_exactly():
    """Block order ([P] positions, padding exact zeros) handed on into the next plain conv:
    its weight columns follow the layout, and on the laid-out input it computes the same."""
    conv = nn.Conv2d(12, 6, 3, padding=1)
    mask = torch.zeros(12, 12, 3, 3, dtype=torch.bool)
    mask[:5, :4], mask[5:, 4:] = True, True  # two blocks of 5 and 7 rows: padded to 8 rows each
    layout = GroupedConv(nn.Conv2d(12, 12, 3, padding=1), mask, align=8).layout
    assert len(layout) == 16 and int((layout < 0).sum()) == 4
    x = torch.randn(2, 12, 5, 5)
    laid = to_layout(x, layout)
    assert laid.shape == (2, 16, 5, 5) and torch.equal(laid[:, layout < 0], torch.zeros(2, 4, 5, 5))
    reader = copy.deepcopy(conv)
    assert absorb(reader, layout) and reader.in_channels == 16
    assert torch.allclose(reader(laid), conv(x), atol=1e-6)


def test_a_dense_conv_fed_by_a_grouped_one_is_timed_as_it_will_run(monkeypatch):
    """Timings faked: the first blocked conv's grouped engine wins clearly, every later one ties
    with its dense conv (within the margin), and a dense conv reading a grouped feeder's padded
    block order takes 1.3x: a conv fed by a grouped one runs grouped, every other conv dense."""
    timed_wide, grouped_seen = [], []

    def fake(dense, fast, x, repeats, warmup, x_other=None, **_):
        mod = _timed(fast)
        if type(mod) is nn.Conv2d:  # the dense conv as it will run, on its feeder's block order
            timed_wide.append((mod.in_channels, x_other.shape[1], x.shape[1]))
            return Timing(1.0, 1.3)
        if isinstance(mod, GroupedConv):
            grouped_seen.append(mod)
            return Timing(1.0, 0.5 if grouped_seen[0] is mod else 1 - ENGINE_MARGIN / 2)
        return Timing(1.0, 1.2)

    m, masks, _ = _bench_case("regroup")
    monkeypatch.setattr("structlth.speedup.choice.time_pair", fake)
    slim = fold_bn(slim_model(m, masks, 1))
    plain = slim_masks(m, masks, 1)
    probe = Probe(torch.randn(2, 1, 28, 28), repeats=1, warmup=0)
    choice = choose_engines(slim, plain, probe)
    feed = feeders(slim)
    blocked = [n for n in choice if len(engine_candidates(plain[n + ".weight"])) > 1]
    fed = {n for n in blocked[1:] if choice.get(feed.get(n)) == "grouped"}
    assert choice[blocked[0]] == "grouped" and fed  # the chain carried on by the as-run timing
    assert all(choice[n] == ("grouped" if n in fed or n == blocked[0] else "dense") for n in choice)
    assert len(timed_wide) == len(fed) and all(w == p and p >= c for w, p, c in timed_wide)
    timed_wide.clear(), grouped_seen.clear()
    for n in fed:  # no block candidate left to them: dense stays, and nothing is timed as it would run
        plain[n + ".weight"] = torch.zeros_like(plain[n + ".weight"])
    again = choose_engines(slim, plain, probe)
    assert again[blocked[0]] == "grouped" and all(again[n] == "dense" for n in fed) and not timed_wide


def _format(t: torch.Tensor) -> str | None:
    """'cl' or 'nchw' for a 4-D tensor laid out so, None where it is both (one channel, 1x1)."""
    cl, plain = t.is_contiguous(memory_format=torch.channels_last), t.is_contiguous()
    return None if cl == plain else ("cl" if cl else "nchw")


def _model_format(model: nn.Module) -> str | None:
    """The one format of a model's 4-D weights (AssertionError on a mix); None if all ambiguous."""
    found = {_format(w) for w in model.parameters() if w.ndim == 4} - {None}
    assert len(found) <= 1, found
    return found.pop() if found else None


def test_choices_are_timed_in_the_format_they_build_for_even_on_one_channel_images(monkeypatch):
    """A [B, 1, H, W] batch is contiguous in both memory formats. A structured ticket's model is
    built (alignment and engines chosen) once in each format, stated rather than read off the
    batch: every timing of a build has both its models, and its activations, in that format."""
    built, raced = [], []

    def record(dense, fast, x, *a, **k):
        fmts = {_model_format(dense), _model_format(fast), _format(x)} - {None}
        assert len(fmts) == 1, fmts
        built.extend(fmts)
        return Timing(1.0, 1.0)

    def race(plain, cl, *a):
        raced.append((_model_format(plain), _model_format(cl)))
        return torch.channels_last

    monkeypatch.setattr("structlth.speedup.measure.fastest_format", lambda *a: torch.channels_last)
    monkeypatch.setattr("structlth.speedup.choice.time_pair", record)
    monkeypatch.setattr("structlth.speedup.choice.format_race", race)
    m, masks, metrics = _bench_case("regroup")
    bench = BenchParams(batch_sizes=[2], repeats=1, warmup=0, onnxruntime=False)
    bench_ticket("regroup", "group", m, masks, metrics, torch.randn(2, 1, 28, 28), bench, layers=False)
    assert built.count("cl") > 20 and built.count("nchw") > 20 and raced == [("nchw", "cl")]


def test_choices_are_timed_on_choice_repeats_pairs_however_few_a_row_takes(monkeypatch):
    """A choice settles a 3% margin, so it takes up to CHOICE_REPEATS pairs even where a bench row
    takes one: fewer, and two processes choose different engines for one ticket. Every choice
    against a bar may stop early (the memory-format race, a plain race, times them all)."""
    pairs, ruled = [], []

    def record(dense, fast, x, repeats, *a, settled=None, **k):
        pairs.append(repeats)
        ruled.append(settled is not None)
        return Timing(1.0, 1.0)

    monkeypatch.setattr("structlth.speedup.measure.fastest_format", lambda *a: torch.channels_last)
    monkeypatch.setattr("structlth.speedup.choice.time_pair", record)
    m, masks, metrics = _bench_case("regroup")
    bench = BenchParams(batch_sizes=[2], repeats=1, warmup=0, onnxruntime=False)
    bench_ticket("regroup", "group", m, masks, metrics, torch.randn(2, 1, 28, 28), bench, layers=False)
    assert len(pairs) > 20 and set(pairs) == {CHOICE_REPEATS} == {bench.choice_repeats}
    assert ruled.count(False) == 1  # no engine beat dense, so no block order was measured (`absorb`)
    pairs.clear()
    bench_ticket(
        "regroup", "group", m, masks, metrics, torch.randn(2, 1, 28, 28), bench.model_copy(update={"choice_repeats": 5}), layers=False
    )
    assert set(pairs) == {5}  # bench.choice_repeats sets it


@pytest.mark.parametrize("dense_format", ["cl", "nchw"])
def test_a_tickets_fast_model_runs_in_the_format_it_runs_faster_in_whatever_the_dense_nets(monkeypatch, dense_format):
    """Timings faked: a model in the other format than the dense net's runs twice as fast. A
    structured ticket's row runs its fast model in that format, and says so; imp's masked-dense
    engine (the A/A) stays in the dense net's."""
    formats = {"cl": torch.channels_last, "nchw": torch.contiguous_format}
    faster = "nchw" if dense_format == "cl" else "cl"
    ms = {faster: 1.0, dense_format: 2.0, None: 2.0}
    monkeypatch.setattr("structlth.speedup.measure.fastest_format", lambda *a: formats[dense_format])
    monkeypatch.setattr(
        "structlth.speedup.choice.time_pair", lambda dense, fast, *a, **k: Timing(ms[_model_format(dense)], ms[_model_format(fast)])
    )
    bench = BenchParams(batch_sizes=[2], repeats=1, warmup=0, onnxruntime=False)
    for kind in ("imp_channel", "regroup", "imp"):
        m, masks, metrics = _bench_case(kind)
        rows, _ = bench_ticket(kind, STRUCTURE[kind], m, masks, metrics, torch.randn(2, 1, 28, 28), bench, layers=False)
        assert rows and all(r["channels_last"] == (dense_format == "cl") for r in rows)
        ticket_format = dense_format if kind == "imp" else faster
        assert all(r["ticket_channels_last"] == (ticket_format == "cl") for r in rows), kind


def test_compiled_engines_are_verified_and_carry_their_compile_time(monkeypatch):
    m, masks, metrics = _bench_case("imp_channel")
    bench = BenchParams(batch_sizes=[4], repeats=1, warmup=0, onnxruntime=False, compile=True, choice_repeats=1)
    x = torch.randn(4, 1, 28, 28)
    monkeypatch.setattr(
        "structlth.speedup.measure.compile_model", lambda model, _x: (model, 1.5)
    )  # inductor takes ~40 s: its plumbing here
    rows, _ = bench_ticket("imp_channel", "channel", m, masks, metrics, x, bench, layers=False)
    assert [(r["engine"], r["compile_s"]) for r in rows] == [("slim", None), ("slim+compile", 1.5)]
    monkeypatch.setattr("structlth.speedup.measure.compile_model", lambda model, _x: (lambda y: model(y) + 1, 1.5))
    with pytest.raises(VerificationError, match=r"imp_channel slim\+compile \(torch\): fast path differs"):
        bench_ticket("imp_channel", "channel", m, masks, metrics, x, bench, layers=False)


def test_the_machine_names_its_cpu_isa_and_runtimes():
    name = machine_name()
    assert f"({torch.backends.cpu.get_cpu_capability()}, " in name and "torch " in name and "ONNX Runtime " in name


def test_load_slim_refuses_non_finite_weights(tmp_path):
    m = randomised_model("resnet20", 0.5, in_ch=1)
    masks = channel_prune(dict(m.named_parameters()), ones_masks(m), 0.5)
    arch = {"arch": "resnet20", "width": 0.5, "in_channels": 1, "num_classes": 10, "small_input_stem": True, "mean": [0.3], "std": [0.3]}
    export_slim(m, masks, arch, tmp_path)
    state, meta = load_tensors(tmp_path / "model.safetensors")
    state["fc.weight"][0, 0] = float("nan")
    save_tensors(tmp_path / "model.safetensors", state, meta)
    with pytest.raises(ArtifactError, match=r"model.safetensors: fc.weight is not finite float32"):
        load_slim(tmp_path)


@pytest.mark.parametrize("engine", [GroupedConv, SubConv, CsrConv])
def test_engines_put_interleaved_blocks_back_in_channel_order(engine):
    torch.manual_seed(1)
    conv = nn.Conv2d(8, 6, 3, padding=1, bias=True)
    mask = torch.zeros(6, 8, 3, 3, dtype=torch.bool)
    mask[0::2, :4] = True  # rows 0, 2, 4: one block on channels 0-3
    mask[1::2, 4:] = True  # rows 1, 3, 5: another on channels 4-7 (every row live, interleaved)
    x = torch.randn(2, 8, 5, 5)
    ref = masked_reference(nn.Sequential(conv), {"0.weight": mask}, 8)
    with torch.no_grad():
        assert torch.allclose(engine(conv, mask)(x), ref(x), atol=1e-5)


@pytest.mark.parametrize("engine", [SubConv, CsrConv])
def test_engines_of_a_dead_layer_output_its_bias_only(engine):
    conv = nn.Conv2d(4, 3, 3, stride=2, padding=1, bias=True)
    out = engine(conv, torch.zeros(3, 4, 3, 3, dtype=torch.bool))(torch.randn(2, 4, 7, 7))
    assert out.shape == (2, 3, 4, 4)
    expect = conv.bias.detach().view(1, 3, 1, 1).expand_as(out) if engine is CsrConv else torch.zeros_like(out)
    assert torch.allclose(out, expect)


def test_a_timing_in_blocks_carries_each_blocks_saving_and_their_interval(monkeypatch):
    """A fake clock: dense takes 1 ms; the fast callable 0.5 ms in the first block of pairs and
    0.8 ms in the second (the machine slowed down for it): block savings 50% and 20%."""
    now = [0.0]
    monkeypatch.setattr("structlth.speedup.timing.time.perf_counter", lambda: now[0])
    calls = [0]

    def dense(_x):
        now[0] += 1e-3

    def fast(_x):
        calls[0] += 1
        now[0] += (0.5 if calls[0] <= 2 else 0.8) * 1e-3

    t = time_pair(dense, fast, torch.zeros(1), repeats=2, warmup=0, blocks=2)
    assert t.block_savings == pytest.approx((0.5, 0.2))
    assert (t.t_dense_ms, t.t_ticket_ms) == pytest.approx((1.0, 0.8))  # medians over all four pairs
    t1 = 12.706204736174707  # t quantile, 1 degree of freedom, 97.5%
    assert t.ci95 == pytest.approx(t1 * (0.3 / math.sqrt(2)) / math.sqrt(2))
    calls[0] = 0
    assert time_pair(dense, fast, torch.zeros(1), repeats=2, warmup=0).ci95 is None  # one block: no interval


@pytest.mark.parametrize(
    "fast_ms, bar, alpha, pairs",
    [
        ((0.5,), 0.97, CHOICE_ALPHA, 7),  # clearly under the bar: settled at the first look
        ((1.5,), 0.97, CHOICE_ALPHA, 7),  # clearly over it
        ((0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 1.5), 0.97, CHOICE_ALPHA, 14),  # 6 of 7 at the first look, 12 of 14 at the second
        ((0.9, 1.1), 0.97, CHOICE_ALPHA, CHOICE_REPEATS),  # on both sides: every pair
        ((0.5,), None, CHOICE_ALPHA, CHOICE_REPEATS),  # no bar: a measurement, not a choice
        ((0.5,), 0.97, None, CHOICE_REPEATS),  # early stops turned off
    ],
)
def test_a_choice_stops_timing_once_a_sign_test_puts_its_pairs_on_one_side_of_the_bar(monkeypatch, fast_ms, bar, alpha, pairs):
    """A fake clock: dense takes 1 ms, the other callable the given ms in turn. The ratio is the
    medians' over the pairs timed, however many that was."""
    now, timed = [0.0], []
    monkeypatch.setattr("structlth.speedup.timing.time.perf_counter", lambda: now[0])

    def dense(_x):
        now[0] += 1.0

    def other(_x):
        now[0] += fast_ms[len(timed) % len(fast_ms)]
        timed.append(now[0])

    probe = Probe(torch.zeros(1), warmup=0, alpha=alpha)
    r = probe.ratio(dense, other, torch.zeros(1), bar=bar)
    assert len(timed) == pairs
    assert r == pytest.approx(sorted(fast_ms[i % len(fast_ms)] for i in range(pairs))[pairs // 2])


ONEDNN_LOG = """\
onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32::blocked:abcd::f0 dst:f32:p:blocked:Acdb32a::f0,,,40x64x3x3,0.02
onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,forward_training,src:f32::blocked:acdb::f0 \
wei:f32:ap:blocked:Acdb32a::f0 bia:f32:a:blocked:a::f0 dst:f32::blocked:acdb::f0,attr-scratchpad:user,alg:convolution_direct,\
mb64_ic64oc40_ih7oh7kh3sh1dh0ph1_iw7ow7kw3sw1dw0pw1,0.98
onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx512_core,forward_training,src:f32:a:blocked:aBcd16b::f0 \
wei:f32:ap:blocked:ABcd16b16a::f0 bia:f32:a:blocked:a::f0 dst:f32:ap:blocked:aBcd16b::f0,attr-scratchpad:user,\
alg:convolution_direct,mb64_ic64oc40_ih7oh7kh3sh1dh0ph1_iw7ow7kw3sw1dw0pw1,0.84
onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core,forward_training,src:f32::blocked:acdb::f0 \
wei:f32:ap:blocked:aBdec32b::f0 bia:f32:a:blocked:a::f0 dst:f32::blocked:acdb::f0,attr-scratchpad:user,alg:convolution_direct,\
g2mb64_ic64oc48_ih7oh7kh3sh1dh0ph1_iw7ow7kw3sw1dw0pw1,0.63
onednn_verbose,v1,primitive,exec,cpu,convolution,brdgmm_dw:avx512_core,forward_training,src:f32::blocked:acdb::f0 \
wei:f32:a:blocked:debcA16a::f0 bia:f32:a:blocked:a::f0 dst:f32::blocked:acdb::f0,attr-scratchpad:user,alg:convolution_direct,\
g24mb64_ic24oc24_ih7oh7kh3sh1dh0ph1_iw7ow7kw3sw1dw0pw1,0.09
"""


def test_onednn_log_gives_each_convs_outputs_rounded_up_to_its_weight_block():
    assert dim_block("ABcd16b16a", "a") == 16 and dim_block("ABcd4b16a4b", "b") == 16 and dim_block("abcd", "a") == 1
    calls = parse_convs(ONEDNN_LOG)  # the reorder is not a conv
    assert [(c.kernel, c.weights, c.groups, c.out_channels, c.kernel_channels) for c in calls] == [
        ("brg_conv_fwd:avx512_core", "Acdb32a", 1, 40, 64),  # 40 outputs in blocks of 32
        ("jit:avx512_core", "ABcd16b16a", 1, 40, 48),  # in blocks of 16
        ("brg_conv_fwd:avx512_core", "aBdec32b", 2, 48, 64),  # 2 groups of 24, each padded to 32
        ("brdgmm_dw:avx512_core", "debcA16a", 24, 24, 32),  # depthwise: 24 groups in blocks of 16
    ]


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="PyTorch without oneDNN")
def test_a_convs_computed_outputs_come_from_the_conv_onednn_ran_and_its_log_leaves_stdout(capfd):
    x = torch.randn(4, 64, 7, 7).contiguous(memory_format=torch.channels_last)
    for out in (40, 64):
        conv = nn.Conv2d(64, out, 3, padding=1).eval().to(memory_format=torch.channels_last)
        (call,) = conv_calls(conv, x)
        block = dim_block(call.weights, "a")
        assert call.out_channels == out and call.kernel_channels % block == 0 and out <= call.kernel_channels < out + block
        assert out % block or call.kernel_channels == out
    os.write(1, b"after the log\n")  # file descriptor 1 is stdout again
    assert capfd.readouterr().out == "after the log\n"


def test_without_onednn_no_conv_is_read_and_nothing_breaks(monkeypatch):
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)  # a PyTorch built without it
    assert conv_calls(nn.Conv2d(3, 8, 3).eval(), torch.randn(2, 3, 8, 8)) == []


def test_the_speed_library_knows_structures_not_method_names():
    """A ticket declares its structure (config.STRUCTURES); structlth.speedup never names a method,
    so a new method of a known structure needs no change there."""
    import ast

    from helpers import tiny_raw
    from structlth.config import parse_params

    names = {"imp", "imp_channel", "refill", "regroup", "torch_pruning", *parse_params(tiny_raw()).methods}
    found = [
        (f.name, node.value)
        for f in sorted((ROOT / "structlth" / "speedup").glob("*.py"))
        for node in ast.walk(ast.parse(f.read_text()))
        if isinstance(node, ast.Constant) and node.value in names
    ]
    assert not found, found


def test_speed_json_gives_each_saving_the_noise_of_its_own_row():
    """imp has no production engine: its saving is the fastest engine's (masked dense, the A/A,
    ±1%), and so is its noise, not the CSR row's ±52%."""
    from structlth.bench import speed_metrics

    rows = pd.DataFrame(
        [
            {"runtime": "torch", "batch": 64, "engine": "masked_dense", "time_saving": 0.002, "ci95": 0.01},
            {"runtime": "torch", "batch": 64, "engine": "csr", "time_saving": -3.0, "ci95": 0.52},
            {"runtime": "onnxruntime", "batch": 64, "engine": "masked_dense", "time_saving": -0.01, "ci95": float("nan")},
        ]
    ).assign(test_acc=0.9, sparsity=0.5, flops_saving=0.4)
    speed = speed_metrics(rows)
    assert speed["saving"] == {"torch_b64": 0.002, "ort_b64": -0.01}
    assert speed["saving_ci95"] == {"torch_b64": 0.01, "ort_b64": None}
    slim = rows.assign(engine=["slim", "slim+compile", "slim"], time_saving=[0.3, 0.5, 0.2])  # the production engine's row, not the best
    assert speed_metrics(slim)["saving_ci95"]["torch_b64"] == 0.01
