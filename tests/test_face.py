"""The package's face: the names a library user imports from `structlth` itself."""

from __future__ import annotations

import pytest
import torch

import structlth as sl


def test_every_face_name_resolves_and_unknown_names_fail():
    for name in sl.__all__:
        assert callable(getattr(sl, name)), name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        sl.nope  # noqa: B018


def test_the_pruning_face_gives_the_functions_after_the_method_modules_load():
    """`from structlth.pruning import refill, regroup` is the algorithm, never a module: the
    registry loading a method's module by name must not shadow the public function."""
    import importlib
    import types

    from structlth import pruning
    from structlth.pruning.registry import KINDS, SOURCES

    for module in [*KINDS.values(), *SOURCES.values()]:
        importlib.import_module(module)
    for name in pruning.__all__:
        assert callable(getattr(pruning, name)) and not isinstance(getattr(pruning, name), types.ModuleType), name


def test_one_version_for_the_package_and_its_metadata():
    from importlib.metadata import version

    assert version("structlth") == sl.__version__


def test_prune_refill_and_slim_a_model_without_the_pipeline():
    model = sl.build_model("resnet20", 10, 3, 0.5).eval()
    weights = model.state_dict()
    masks = sl.magnitude_prune(weights, sl.ones_masks(model), 0.5)
    ticket = sl.refill_masks(masks, sl.weight_scores("magnitude", weights, masks), 0.0)
    slim = sl.slim_model(model, ticket, in_channels=3)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(slim(x), sl.masked_reference(model, ticket, 3)(x), atol=1e-4)
    assert sum(p.numel() for p in slim.parameters()) < sum(p.numel() for p in model.parameters())
    printed = str(slim).splitlines()  # the widths each layer kept, not the generated code
    convs = {n: m for n, m in slim.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert "def forward" not in str(slim) and len(printed) == 1 + len(convs) + 1
    assert f"  layers.0.conv1: {convs['layers.0.conv1'].in_channels} -> {convs['layers.0.conv1'].out_channels}" in printed


def test_export_ticket_writes_the_slim_net_of_a_saved_round(tmp_path, params, data_dir):
    from structlth.data import load_dataset
    from structlth.rounds import Context, save_round

    ctx = Context(params, load_dataset(data_dir), torch.device("cpu"))
    model = ctx.model().eval()
    weights = model.state_dict()
    ticket = sl.drop_untrainable(
        model,
        sl.refill_masks(
            sl.magnitude_prune(weights, sl.ones_masks(model), 0.5), sl.weight_scores("magnitude", weights, sl.ones_masks(model)), 0.0
        ),
        1,
    )
    state = {k: (v * ticket[k] if k in ticket else v) for k, v in weights.items()}
    save_round(ctx, tmp_path / "refill" / "round1", state, ticket, {}, kind="refill", test_pred=ctx.data.test.labels)
    message = sl.export_ticket(params, tmp_path / "refill" / "round1", tmp_path / "out", "safetensors", data_dir)
    assert message.startswith(f"exported {tmp_path / 'refill' / 'round1'} -> {tmp_path / 'out'}:") and "of dense" in message
    model.load_state_dict(state)
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(sl.load_slim(tmp_path / "out")(x), sl.masked_reference(model, ticket, 1)(x), atol=1e-4)
    sl.export_ticket(params, tmp_path / "refill" / "round1", tmp_path / "onnx", "onnx", data_dir)
    import json

    import numpy as np
    import onnxruntime as ort

    spec = json.loads((tmp_path / "onnx" / "architecture.json").read_text())  # the README's example, as written there
    images = np.random.rand(8, *spec["input_shape"])
    x = ((images - np.reshape(spec["mean"], (-1, 1, 1))) / np.reshape(spec["std"], (-1, 1, 1))).astype("float32")
    session = ort.InferenceSession(str(tmp_path / "onnx" / "model.onnx"), providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"input": x})[0]
    assert spec["input_shape"] == [1, 28, 28] and logits.shape == (8, ctx.data.num_classes)
    assert torch.allclose(torch.from_numpy(logits), sl.masked_reference(model, ticket, 1)(torch.from_numpy(x)), atol=1e-4)


def test_cli_inspect_lists_layers_in_model_order(tmp_path):
    import subprocess
    import sys

    from structlth.artifacts import save_tensors

    model = sl.build_model("vgg16", 10, 1, 0.25)
    save_tensors(tmp_path / "mask.safetensors", sl.ones_masks(model), {"arch": "vgg16", "kind": "imp"})
    out = subprocess.run(
        [sys.executable, "-m", "structlth.cli", "inspect", str(tmp_path)],
        capture_output=True,
        text=True,
        env={"COLUMNS": "200", "PATH": ""},
    ).stdout
    rows = [line.split("│")[1].strip() for line in out.splitlines() if "features." in line]
    assert rows == [n for n in sl.ones_masks(model)]  # features.3 ... features.40, not features.10 first
