"""ONNX export and ONNX Runtime: every structured ticket kind exports, passes onnx.checker and
runs in ONNX Runtime with the masked model's outputs."""

from __future__ import annotations

import sys

import onnx
import onnxruntime as ort
import pytest
import torch

from helpers import STRUCTURE, randomised_model
from structlth.config import BenchParams
from structlth.errors import ArtifactError, StructlthError
from structlth.export import export_onnx
from structlth.masks import ones_masks
from structlth.pruning import channel_prune, magnitude_prune, parts_for, regroup
from structlth.speedup.choice import Probe, fast_models, slim_masks
from structlth.speedup.engines import masked_reference, swap_convs
from structlth.speedup.layout import fold_bn, fold_layouts
from structlth.speedup.measure import bench_ticket
from structlth.speedup.onnxrt import OrtModel, op_types, to_onnx
from structlth.speedup.slim import slim_model

ARCH = {"arch": "resnet20", "width": 0.5, "in_channels": 1, "num_classes": 10, "small_input_stem": True, "mean": [0.3], "std": [0.3]}


def _ticket(kind: str):
    m = randomised_model("resnet20", 0.5, in_ch=1)
    w = dict(m.named_parameters())
    if kind in ("refill", "imp_channel"):
        return m, channel_prune(w, ones_masks(m), 0.5)
    masks = magnitude_prune(w, ones_masks(m), 0.6)
    if kind == "regroup":
        masks = {n: regroup(v, parts=parts_for(v.shape[0], 4), min_rows=2, t2=0.3, b2=2, granularity="channel") for n, v in masks.items()}
    return m, masks


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return float((a - b).abs().max()) <= 1e-4 * float(b.abs().max())


@pytest.mark.parametrize("runtime", ["torch", "onnxruntime"])
@pytest.mark.parametrize("kind", ["refill", "imp_channel", "regroup", "imp"])
def test_the_benched_fast_model_runs_in_onnxruntime_with_the_masked_outputs(kind, runtime):
    """Whichever runtime chose its alignment and engines."""
    m, masks = _ticket(kind)
    x = torch.randn(4, 1, 28, 28)
    ref = masked_reference(m, masks, 1)
    for engine, fast in fast_models(STRUCTURE[kind], m, masks, 1, Probe(x, repeats=1, warmup=0, runtime=runtime)).items():
        if engine == "csr":  # torch sparse CSR tensors do not export
            continue
        y = torch.randn(7, 1, 28, 28)  # another batch size than the traced one
        out = OrtModel(to_onnx(fast, x), threads=1)(y)
        with torch.no_grad():
            assert out.shape == (7, 10) and _close(out, ref(y)), f"{kind} {engine}"


@pytest.mark.parametrize("engine", ["grouped", "subconv"])
def test_block_engines_export_as_gather_and_grouped_or_sub_convs(engine):
    m, masks = _ticket("regroup")
    slim = fold_bn(slim_model(m, masks, 1, 8))
    plain = slim_masks(m, masks, 1)
    fast = fold_layouts(swap_convs(slim, plain, {n.removesuffix(".weight"): engine for n in plain}))
    x = torch.randn(3, 1, 28, 28)
    data = to_onnx(fast, x)
    graph = onnx.load_from_string(data).graph
    groups = [a.i for n in graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert "Gather" in op_types(data)
    if engine == "grouped":
        assert max(groups) > 1  # one grouped conv runs a layer's blocks
    with torch.no_grad():
        assert _close(OrtModel(data, 1)(x), masked_reference(m, masks, 1)(x))


@pytest.mark.parametrize("kind", ["refill", "regroup"])
def test_export_onnx_writes_a_verified_model_onnxruntime_loads_in_three_lines(tmp_path, kind):
    m, masks = _ticket(kind)
    x = torch.randn(8, 1, 28, 28)
    engine, ops = export_onnx(STRUCTURE[kind], m, masks, ARCH, x, tmp_path, 1e-3)
    assert engine == {"refill": "slim", "regroup": "slim+blocks"}[kind] and "Conv" in ops
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input": x.numpy()})[0]
    with torch.no_grad():
        assert _close(torch.from_numpy(logits), masked_reference(m, masks, 1)(x))
    assert (tmp_path / "architecture.json").is_file()


def test_export_onnx_refuses_unstructured_tickets_and_a_file_as_folder(tmp_path):
    m, masks = _ticket("imp")
    with pytest.raises(ArtifactError, match="unstructured tickets have no fast model"):
        export_onnx("unstructured", m, masks, ARCH, torch.randn(2, 1, 28, 28), tmp_path, 1e-3)
    (tmp_path / "f").write_text("")
    with pytest.raises(ArtifactError, match="exists and is not a folder"):
        export_onnx("channel", *_ticket("refill"), ARCH, torch.randn(2, 1, 28, 28), tmp_path / "f", 1e-3)


# a bench of a few pairs, each choice timed on one (these check rows and runtimes, not speed)
BENCH = BenchParams(batch_sizes=[2], repeats=1, warmup=0, choice_repeats=1)
METRICS = {"flops": 1, "flops_dense": 4, "params_kept": 10, "sparsity": 0.6, "test_acc": 0.9}


def test_bench_times_onnxruntime_beside_pytorch_for_exportable_engines():
    m, masks = _ticket("imp")
    rows, layers = bench_ticket("imp", "unstructured", m, masks, METRICS, torch.randn(2, 1, 28, 28), BENCH, layers=True)
    assert {(r["runtime"], r["engine"]) for r in rows} == {("torch", "masked_dense"), ("torch", "csr"), ("onnxruntime", "masked_dense")}
    assert {r["runtime"] for r in layers} == {"torch"}  # csr's per-layer rows: PyTorch only
    off = bench_ticket(
        "imp", "unstructured", m, masks, METRICS, torch.randn(2, 1, 28, 28), BENCH.model_copy(update={"onnxruntime": False}), layers=False
    )[0]
    assert {r["runtime"] for r in off} == {"torch"}


def test_a_missing_onnxruntime_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(StructlthError, match=r"onnxruntime is not installed: pip install -e '.\[onnx\]'.*bench.onnxruntime: false"):
        OrtModel(b"", 1)


def test_engines_for_onnxruntime_are_chosen_by_timings_in_onnxruntime(monkeypatch):
    import structlth.speedup.choice as choice

    timed, time_pair = [], choice.time_pair

    def record(dense, fast, x, repeats, warmup, x_other=None, **_):
        timed.append((type(dense) is OrtModel, type(fast) is OrtModel))
        return time_pair(dense, fast, x, 1, 0, x_other)

    m, masks = _ticket("regroup")
    monkeypatch.setattr(choice, "time_pair", record)
    bench_ticket("regroup", "group", m, masks, METRICS, torch.randn(2, 1, 28, 28), BENCH, layers=False)
    assert set(timed) == {(False, False), (True, True)}  # alignment and engines: each runtime's own timings
