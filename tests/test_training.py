"""Masked training: zeros stay zero, dead channels stay dead, resume is exact, runs repeat."""

from __future__ import annotations

import torch
from structlth.config import Augment, TrainParams
from structlth.graph import bn_masks
from structlth.masks import ones_masks, training_masks
from structlth.models import build_model
from structlth.pruning import magnitude_prune
from structlth.train import lr_at, state_of, train

from conftest import synthetic_dataset

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
    train(model, ds, HP, AUG, 32, training_masks(model, masks, 1), epochs=2, log=lambda s: None)
    params = dict(model.named_parameters())
    for name, m in masks.items():
        assert (params[name][~m] == 0).all(), name
        assert (params[name][m] != 0).float().mean() > 0.5, "survivors must still train"


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
    logs = []
    train(_model(), ds, HP, AUG, 32, masks, epochs=2, checkpoint=ckpt, identity="b", log=logs.append)
    assert not any("resuming" in line for line in logs)


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
    assert lr_at(warm, 0.5, 10) < lr_at(warm, 1.5, 10) <= 0.1
    assert lr_at(warm, 10, 10) < 1e-9
