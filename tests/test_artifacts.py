"""Artifacts: round trips, deterministic bytes, clear errors for broken or foreign files."""

from __future__ import annotations

import ast
import hashlib
import json

import pytest
import torch
import yaml

from helpers import ROOT, synthetic_dataset
from structlth.artifacts import load_tensors, read_json, save_tensors, staged_dir, write_json
from structlth.errors import ArtifactError
from structlth.masks import check_masks, ones_masks
from structlth.models import build_model
from structlth.pruning import magnitude_prune
from structlth.rounds import Context, load_round, save_round
from structlth.train import state_of


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    t = {"b": torch.arange(6.0).view(2, 3), "a": torch.tensor([True, False])}
    save_tensors(tmp_path / "x.safetensors", t, {"arch": "resnet20", "n": 3})
    got, meta = load_tensors(tmp_path / "x.safetensors", expect={"a": (2,), "b": (2, 3)}, expect_meta={"arch": "resnet20"})
    assert torch.equal(got["b"], t["b"]) and torch.equal(got["a"], t["a"]) and meta["n"] == 3


def test_same_content_same_bytes(tmp_path):
    t = {"w": torch.randn(4, 4), "m": torch.ones(3, dtype=torch.bool)}
    save_tensors(tmp_path / "1.safetensors", t, {"k": 1, "a": [1, 2]})
    save_tensors(tmp_path / "2.safetensors", dict(reversed(list(t.items()))), {"a": [1, 2], "k": 1})
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(tmp_path / "1.safetensors") == digest(tmp_path / "2.safetensors")


def test_truncated_file_is_a_clear_error(tmp_path):
    p = tmp_path / "w.safetensors"
    save_tensors(p, {"w": torch.randn(64, 64)}, {})
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(ArtifactError, match=r"w\.safetensors: not a readable safetensors file"):
        load_tensors(p)


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(ArtifactError, match="missing"):
        load_tensors(tmp_path / "nope.safetensors")
    (tmp_path / "g.safetensors").write_bytes(b"\x00" * 50)
    with pytest.raises(ArtifactError, match="g.safetensors"):
        load_tensors(tmp_path / "g.safetensors")
    (tmp_path / "m.json").write_text("{")
    with pytest.raises(ArtifactError, match="m.json: not valid JSON"):
        read_json(tmp_path / "m.json")


def test_shape_and_metadata_mismatch_name_the_file(tmp_path):
    p = tmp_path / "w.safetensors"
    save_tensors(p, {"w": torch.zeros(2, 3)}, {"arch": "vgg16"})
    with pytest.raises(ArtifactError, match=r"w\.safetensors: made for arch='vgg16'"):
        load_tensors(p, expect_meta={"arch": "resnet20"})
    with pytest.raises(ArtifactError, match=r"w has shape \(2, 3\), the model needs \(3, 2\)"):
        load_tensors(p, expect={"w": (3, 2)})


def test_mask_of_another_architecture_is_rejected():
    masks = ones_masks(build_model("resnet20", 10, 1, 0.5))
    with pytest.raises(ArtifactError, match="another architecture"):
        check_masks(build_model("resnet20", 10, 1, 1.0), masks, "mask.safetensors")
    with pytest.raises(ArtifactError, match="does not have"):
        check_masks(build_model("vgg16", 10, 1, 0.25), masks, "mask.safetensors")


def _round(params, channels: int, rate: float):
    ctx = Context(params, synthetic_dataset(channels=channels), torch.device("cpu"))
    model = ctx.model()
    masks = magnitude_prune({k: v.detach() for k, v in model.named_parameters()}, ones_masks(model), rate)
    state = {k: (v * masks[k] if k in masks else v) for k, v in state_of(model).items()}
    return ctx, model, state, masks


def test_mask_and_weights_of_different_rounds_are_rejected(tmp_path, params):
    ctx, model, state, masks = _round(params, 1, 0.5)
    r1, r2 = tmp_path / "imp" / "round1", tmp_path / "imp" / "round2"
    save_round(ctx, r1, state, masks, {}, kind="imp", test_pred=ctx.data.test.labels)
    _, _, other_state, other_masks = _round(params, 1, 0.6)
    save_round(ctx, r2, other_state, other_masks, {}, kind="imp", test_pred=ctx.data.test.labels)
    load_round(ctx, r2, model)  # consistent
    (r2 / "mask.safetensors").write_bytes((r1 / "mask.safetensors").read_bytes())
    with pytest.raises(ArtifactError, match=r"round2/mask.safetensors: made for round='imp/round1', but round='imp/round2'"):
        load_round(ctx, r2, model)
    (r2 / "weights.safetensors").write_bytes((r1 / "weights.safetensors").read_bytes())  # the whole round copied
    with pytest.raises(ArtifactError, match=r"round2/weights.safetensors: made for round='imp/round1'"):
        load_round(ctx, r2, model)
    load_round(ctx, r2, model, expect_round=False)  # a moved ticket folder (export) is still one consistent round


def test_a_flipped_mask_bit_is_named_as_an_edited_mask(tmp_path, params):
    ctx, model, state, masks = _round(params, 1, 0.5)
    d = tmp_path / "imp" / "round1"
    save_round(ctx, d, state, masks, {}, kind="imp", test_pred=ctx.data.test.labels)
    edited, meta = load_tensors(d / "mask.safetensors")
    name = next(iter(edited))
    edited[name].view(-1)[torch.nonzero(~edited[name].view(-1))[0]] = True  # one pruned weight back (0 -> 1)
    save_tensors(d / "mask.safetensors", edited, meta)
    with pytest.raises(ArtifactError, match="differs from the mask weights.safetensors was trained with"):
        load_round(ctx, d, model)


def test_artifacts_for_other_data_channels_are_rejected(tmp_path, params):
    ctx1, _, state, masks = _round(params, 1, 0.5)
    save_round(ctx1, tmp_path / "r", state, masks, {}, kind="imp", test_pred=ctx1.data.test.labels)
    ctx3, model3, _, _ = _round(params, 3, 0.5)
    with pytest.raises(ArtifactError, match=r"weights\.safetensors: made for in_channels=1, but in_channels=3"):
        load_round(ctx3, tmp_path / "r", model3)


def test_staged_dir_replaces_the_folder_whole_or_not_at_all(tmp_path):
    out = tmp_path / "round1"
    with pytest.raises(KeyboardInterrupt):
        with staged_dir(out) as d:
            write_json(d / "metrics.json", {"a": 1})
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    with staged_dir(out) as d:
        write_json(d / "metrics.json", {"a": 1})
        assert not out.exists()
    assert read_json(out / "metrics.json") == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["round1"]


def test_json_is_sorted_and_atomic(tmp_path):
    write_json(tmp_path / "m.json", {"b": 1, "a": 2})
    assert (tmp_path / "m.json").read_text().index('"a"') < (tmp_path / "m.json").read_text().index('"b"')
    assert not list(tmp_path.glob("*.tmp"))


def test_no_pickle_loading_anywhere_in_the_code():
    """Only safetensors, JSON and YAML are read: no pickle, no unsafe torch.load."""
    for path in list((ROOT / "structlth").rglob("*.py")) + list((ROOT / "stages").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
                assert not any(n.split(".")[0] in ("pickle", "dill", "cloudpickle", "joblib") for n in names), path
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                base = ast.unparse(node.func.value)
                if base == "torch":
                    kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
                    assert kw.get("weights_only") == "True", f"{path}: torch.load without weights_only=True"
                assert base not in ("pickle", "yaml"), f"{path}: {base}.load"


def test_artifacts_get_the_ordinary_file_mode(tmp_path):
    import os
    import stat

    from structlth.artifacts import write_json

    write_json(tmp_path / "m.json", {"a": 1})
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o666 & ~mask


@pytest.mark.parametrize(
    "corrupt, what",
    [
        (lambda st, mk: mk.update({k: v.float() * 0.5 for k, v in mk.items()}), "masks are bool"),
        (lambda st, mk: st.update({k: v.clone().fill_(float("nan")) for k, v in list(st.items())[:1]}), "not finite float32"),
        (lambda st, mk: st.update({k: v.double() for k, v in list(st.items())[:1]}), "not finite float32"),
    ],
)
def test_round_artifacts_with_bad_values_are_rejected(tmp_path, params, corrupt, what):
    ctx = Context(params, synthetic_dataset(), torch.device("cpu"))
    model = ctx.model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    masks = ones_masks(model)
    corrupt(state, masks)
    save_round(ctx, tmp_path / "r", state, masks, {}, kind="imp", test_pred=ctx.data.test.labels)
    with pytest.raises(ArtifactError, match=what):
        load_round(ctx, tmp_path / "r", ctx.model())


@pytest.mark.parametrize("failing", ["os.replace", "os.fsync"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch, failing):
    write_json(tmp_path / "m.json", {"old": 1})

    def boom(*a, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(failing, boom)
    with pytest.raises(OSError, match="No space left"):
        write_json(tmp_path / "m.json", {"new": 2})
    monkeypatch.undo()
    assert read_json(tmp_path / "m.json") == {"old": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_verify_checks_each_file_of_a_folder_output_against_dvcs_listing(tmp_path):
    from structlth.verify import verify_outputs

    (tmp_path / "artifacts" / "data").mkdir(parents=True)
    files = {"index.json": b"{}\n", "sub/x.bin": b"\x00\x01"}
    listing = []
    for rel, data in files.items():
        (tmp_path / "artifacts" / "data" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "artifacts" / "data" / rel).write_bytes(data)
        listing.append({"md5": hashlib.md5(data).hexdigest(), "relpath": rel})
    cache = tmp_path / ".dvc" / "cache" / "files" / "md5" / "ab"
    cache.mkdir(parents=True)
    (cache / "cdef.dir").write_text(json.dumps(listing))
    (tmp_path / "dvc.lock").write_text(
        yaml.safe_dump({"schema": "2.0", "stages": {"prepare": {"outs": [{"path": "artifacts/data", "md5": "abcdef.dir"}]}}})
    )
    assert verify_outputs(tmp_path / "dvc.lock") == (2, [])
    (tmp_path / "artifacts" / "data" / "sub" / "x.bin").write_bytes(b"\x00\x02")
    n, bad = verify_outputs(tmp_path / "dvc.lock")
    assert n == 2 and len(bad) == 1 and bad[0].startswith("artifacts/data/sub/x.bin: content differs")
    (cache / "cdef.dir").unlink()
    with pytest.raises(ArtifactError, match=r"artifacts/data: its listing .* is not readable"):
        verify_outputs(tmp_path / "dvc.lock")


def test_round_predictions_round_trip_and_name_a_mismatch(tmp_path, params):
    from structlth.rounds import load_predictions

    ctx = Context(params, synthetic_dataset(), torch.device("cpu"))
    model = ctx.model()
    state, masks = {k: v.clone() for k, v in model.state_dict().items()}, ones_masks(model)
    labels = ctx.data.test.labels
    pred = labels.clone()
    pred[:10] = (pred[:10] + 1) % 4  # the first ten images wrong
    save_round(ctx, tmp_path / "r", state, masks, {}, kind="imp", test_pred=pred)
    correct, meta = load_predictions(tmp_path / "r" / "predictions.safetensors")
    assert correct.tolist() == [False] * 10 + [True] * (len(labels) - 10)
    assert meta["test_images"] == len(labels) and meta["round"] == f"{tmp_path.name}/r"
    with pytest.raises(ArtifactError, match=f"5 predictions for {len(labels)} test images"):
        save_round(ctx, tmp_path / "s", state, masks, {}, kind="imp", test_pred=pred[:5])
    with pytest.raises(ArtifactError, match="no test predictions"):
        save_round(ctx, tmp_path / "s", state, masks, {}, kind="imp", test_pred=None)
    with pytest.raises(ArtifactError, match="not a predictions file"):
        load_predictions(tmp_path / "r" / "mask.safetensors")
