"""Masked training: zeros stay zero, dead channels stay dead, resume is exact, runs repeat."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from helpers import synthetic_dataset
from structlth.config import Augment, TrainParams
from structlth.liveness import bn_masks
from structlth.masks import ones_masks, training_masks
from structlth.models import build_model
from structlth.pruning import magnitude_prune
from structlth.rounds import Context
from structlth.train import lr_at, state_of, train

HP = TrainParams(epochs=2, lr=0.1, momentum=0.9, weight_decay=5e-3, rewind_epoch=1, schedule="cosine")
AUG = Augment(crop_padding=2, hflip=True)


def _model():
    torch.manual_seed(0)
    return build_model("resnet20", 4, 1, 0.25)


def _pruned_masks(model):
    w = {k: v for k, v in model.named_parameters()}
    return magnitude_prune(w, ones_masks(model), 0.6)


def test_pruned_weights_stay_exactly_zero_under_momentum_and_weight_decay():
    ds = synthetic_dataset()
    model = _model()
    masks = _pruned_masks(model)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    train(model, ds, HP, AUG, 32, training_masks(model, masks, 1), epochs=2, log=lambda s: None)
    params = dict(model.named_parameters())
    for name, m in masks.items():
        assert (params[name][~m] == 0).all(), name
        assert (params[name][m] != before[name][m]).float().mean() > 0.9, f"{name}: survivors must train"


def test_dead_channels_mask_their_bn_and_output_exact_zeros():
    model = _model()
    masks = ones_masks(model)
    conv = "layers.0.conv1.weight"
    masks[conv] = torch.zeros_like(masks[conv])
    masks[conv][0] = True  # only channel 0 alive
    bn = bn_masks(model, masks, 1)
    assert bn["layers.0.bn1.weight"].tolist() == [True] + [False] * (masks[conv].shape[0] - 1)
    ds = synthetic_dataset()
    train(model, ds, HP, AUG, 32, training_masks(model, masks, 1), epochs=1, log=lambda s: None)
    model.eval()
    seen = {}
    model.layers[0].bn1.register_forward_hook(lambda m, i, o: seen.update(out=o))
    model(torch.randn(2, 1, 28, 28))
    assert (seen["out"][:, 1:] == 0).all()


class Killed(Exception):
    pass


def _kill_after_first_epoch(line: str) -> None:
    if line.startswith("epoch 1/"):
        raise Killed


def test_resume_from_checkpoint_equals_uninterrupted_run(tmp_path):
    ds = synthetic_dataset()
    ref = _model()
    masks = training_masks(ref, _pruned_masks(ref), 1)
    hp = HP.model_copy(update={"epochs": 3})
    train(ref, ds, hp, AUG, 32, masks, epochs=3, log=lambda s: None)

    ckpt = tmp_path / "ckpt.safetensors"
    try:  # interrupted right after the checkpoint of epoch 1 was written
        train(_model(), ds, hp, AUG, 32, masks, epochs=3, checkpoint=ckpt, identity="x", log=_kill_after_first_epoch)
    except Killed:
        pass
    assert ckpt.is_file()
    resumed, logs = _model(), []
    train(resumed, ds, hp, AUG, 32, masks, epochs=3, checkpoint=ckpt, identity="x", log=logs.append)
    assert logs[0].startswith("resuming") and len(logs) == 3
    for k, v in state_of(ref).items():
        assert torch.equal(v, state_of(resumed)[k]), k


def test_checkpoint_of_other_inputs_is_not_resumed(tmp_path):
    ds = synthetic_dataset()
    ckpt = tmp_path / "ckpt.safetensors"
    m = _model()
    masks = training_masks(m, ones_masks(m), 1)
    try:
        train(m, ds, HP, AUG, 32, masks, epochs=2, checkpoint=ckpt, identity="a", log=_kill_after_first_epoch)
    except Killed:
        pass
    logs, fresh, restarted = [], _model(), _model()
    train(restarted, ds, HP, AUG, 32, masks, epochs=2, checkpoint=ckpt, identity="b", log=logs.append)
    assert [line.split()[1] for line in logs] == ["1/2", "2/2"]  # both epochs trained, none resumed
    train(fresh, ds, HP, AUG, 32, masks, epochs=2, log=lambda s: None)
    assert all(torch.equal(v, state_of(restarted)[k]) for k, v in state_of(fresh).items())


def test_same_seed_same_weights_bitwise():
    ds = synthetic_dataset()
    runs = []
    for _ in range(2):
        m = _model()
        train(m, ds, HP, AUG, 32, training_masks(m, ones_masks(m), 1), epochs=1, log=lambda s: None)
        runs.append(state_of(m))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_lr_schedules():
    multi = TrainParams(epochs=160, lr=0.1, schedule="multistep", milestones=[80, 120], rewind_epoch=8)
    assert lr_at(multi, 0, 160) == 0.1
    assert abs(lr_at(multi, 80, 160) - 0.01) < 1e-12
    assert abs(lr_at(multi, 130, 160) - 0.001) < 1e-12
    warm = TrainParams(epochs=10, lr=0.1, warmup_epochs=2, schedule="cosine", rewind_epoch=1)
    assert lr_at(warm, 0.5, 10) == pytest.approx(0.1 * 0.501 / 2)  # linear warmup
    assert lr_at(warm, 2, 10) == pytest.approx(0.1)  # cosine starts at lr
    assert lr_at(warm, 6, 10) == pytest.approx(0.05)  # its midpoint: half of lr
    assert lr_at(warm, 10, 10) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(multi, 40, 80) == pytest.approx(0.01)  # retraining in 80 epochs halves the milestones


def test_checkpoint_identity_covers_the_library_code(monkeypatch, params, tmp_path):
    """A code change must not resume from the old code's checkpoint: the identity train() gets
    ends with the digest of the code that runs (training's and the stage's methods'), and each
    identity has its own checkpoint file, so another run of the same stage (an experiment)
    never overwrites a resumable one."""
    from structlth import training
    from structlth.train import TrainResult

    seen = []
    monkeypatch.setattr(training, "train", lambda *a, **kw: seen.append((kw["identity"], kw["checkpoint"])) or TrainResult())
    ctx = Context(params, synthetic_dataset(), torch.device("cpu"))
    model = ctx.model()
    for digest in ("code-a", "code-b", "code-b"):
        monkeypatch.setattr(training, "code_digest", lambda *methods, digest=digest: digest + "+".join(methods))
        training.train_masked(
            ctx, model, ones_masks(model), start_epoch=0, rewind_epoch=None, checkpoint=tmp_path / "pretrain.safetensors", identity="params"
        )
    training.train_masked(ctx, model, ones_masks(model), start_epoch=0, rewind_epoch=None, checkpoint=None, identity="p", methods=("m",))
    assert [i for i, _ in seen] == ["paramscode-a", "paramscode-b", "paramscode-b", "pcode-bm"]
    (a, path_a), (_, path_b), (_, again), _ = seen
    assert path_a != path_b and path_b == again and path_a.parent == tmp_path
    assert path_a.name.startswith("pretrain.") and path_a.suffix == ".safetensors"


def test_code_digest_is_the_training_code_closure_and_the_methods_it_is_given():
    from structlth import training
    from structlth.codedeps import closure

    files = {f.name for f in closure(Path(training.__file__), Path(training.__file__).parents[1])}
    assert {"training.py", "train.py", "masks.py", "artifacts.py"} <= files
    assert not files & {"report.py", "tickets.py", "refill.py", "regroup.py", "torch_pruning.py", "snip.py", "slim.py"}
    assert len(training.code_digest()) == 16
    assert training.code_digest("structlth.pruning.kinds.refill") not in (
        training.code_digest(),
        training.code_digest("structlth.pruning.kinds.regroup"),
    )


def test_resume_before_the_rewind_epoch_keeps_the_same_rewind_point(tmp_path):
    ds = synthetic_dataset()
    hp = HP.model_copy(update={"epochs": 3, "rewind_epoch": 2})
    ref = _model()
    masks = training_masks(ref, ones_masks(ref), 1)
    full = train(ref, ds, hp, AUG, 32, masks, epochs=3, rewind_epoch=2, log=lambda s: None)
    ckpt = tmp_path / "ckpt.safetensors"
    try:  # killed after epoch 1, before the rewind point (epoch 2) exists
        train(_model(), ds, hp, AUG, 32, masks, epochs=3, rewind_epoch=2, checkpoint=ckpt, identity="x", log=_kill_after_first_epoch)
    except Killed:
        pass
    resumed = train(_model(), ds, hp, AUG, 32, masks, epochs=3, rewind_epoch=2, checkpoint=ckpt, identity="x", log=lambda s: None)
    assert resumed.rewind_state is not None
    assert all(torch.equal(v, resumed.rewind_state[k]) for k, v in full.rewind_state.items())


def test_a_truncated_checkpoint_restarts_as_a_fresh_run(tmp_path):
    ds = synthetic_dataset()
    m = _model()
    masks = training_masks(m, ones_masks(m), 1)
    ckpt = tmp_path / "ckpt.safetensors"
    try:
        train(m, ds, HP, AUG, 32, masks, epochs=2, checkpoint=ckpt, identity="x", log=_kill_after_first_epoch)
    except Killed:
        pass
    ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])  # a half-written file
    logs, restarted, fresh = [], _model(), _model()
    train(restarted, ds, HP, AUG, 32, masks, epochs=2, checkpoint=ckpt, identity="x", log=logs.append)
    assert [line.split()[1] for line in logs] == ["1/2", "2/2"]
    train(fresh, ds, HP, AUG, 32, masks, epochs=2, log=lambda s: None)
    assert all(torch.equal(v, state_of(restarted)[k]) for k, v in state_of(fresh).items())


def test_a_ticket_retrains_from_the_start_its_init_names(monkeypatch, params):
    """init: original restarts from pretraining's own initialisation (train.seed), random from a
    fresh one under another seed (the same every time); the mask applies to either."""
    from structlth import training
    from structlth.train import TrainResult

    starts = []
    monkeypatch.setattr(training, "train_masked", lambda ctx, model, masks, **kw: starts.append(copy_state(model)) or TrainResult())
    ctx = Context(params, synthetic_dataset(), torch.device("cpu"))
    masks = magnitude_prune(ctx.model().state_dict(), ones_masks(ctx.model()), 0.5)
    for init in ("original", "random", "random"):
        training.retrain(ctx, masks, Path("unused"), None, "id", init)
    original, random_a, random_b = starts
    fresh = ctx.model().state_dict()
    assert all(torch.equal(original[k], fresh[k]) for k in fresh)
    assert all(torch.equal(random_a[k], random_b[k]) for k in fresh)
    assert any(not torch.equal(random_a[k], original[k]) for k in masks)


def copy_state(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}
