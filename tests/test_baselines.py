"""The Torch-Pruning baselines as their papers define them: filter L1 (Li et al. 2017) keeps each
layer's largest-norm filters at one ratio per layer; Torch-Pruning's group L1 and network slimming
rank net-wide, slimming on a dense net trained with an L1 penalty on BN scales; fine-tuning runs at
its own learning rate."""

from __future__ import annotations

import pytest
import torch

from helpers import synthetic_dataset
from structlth.config import parse_params
from structlth.models import build_model
from structlth.pruning.kinds.torch_pruning import channel_masks


def _net():
    torch.manual_seed(0)
    net = build_model("resnet20", 10, 3, 1.0)
    with torch.no_grad():  # BN scales that differ by layer, as after training
        for i, bn in enumerate(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.weight.copy_(torch.rand(bn.weight.shape) * (1 + i % 3))
    prunable = {n: p for n, p in net.named_parameters() if p.dim() == 4 and n != "conv1.weight"}  # the stem kept whole
    return net, prunable


def _kept(masks, name):
    return masks[name].flatten(1).any(1)


def test_filter_l1_keeps_each_layers_largest_filters_at_one_ratio():
    net, prunable = _net()
    masks = channel_masks(net, prunable, torch.zeros(1, 3, 32, 32), "filter_l1", 0.5, 1)
    inner = [n for n in masks if n.endswith("conv1.weight")]  # a block's first conv: its outputs feed nothing else
    assert all(int(_kept(masks, n).sum()) == prunable[n].shape[0] // 2 for n in inner)
    for n in inner:
        norms = prunable[n].detach().abs().flatten(1).sum(1)  # each filter's own L1 norm
        assert set(_kept(masks, n).nonzero().flatten().tolist()) == set(norms.topk(len(norms) // 2).indices.tolist())


@pytest.mark.parametrize("importance", ["l1", "bn_scale"])
def test_group_l1_and_slimming_rank_across_the_net(importance):
    net, prunable = _net()
    masks = channel_masks(net, prunable, torch.zeros(1, 3, 32, 32), importance, 0.5, 1)
    shares = {n: float(_kept(masks, n).float().mean()) for n in masks if n.endswith("conv1.weight")}
    assert len(set(shares.values())) > 1  # one global ranking: layers keep different shares


@pytest.mark.parametrize(
    "edit, lr",
    [({}, 0.01), ({"finetune_lr": 0.002}, 0.002), ({"finetune_lr": None}, 0.05), ({"start": "rewind"}, 0.05)],
)
def test_a_finetuned_baseline_trains_at_its_own_learning_rate(monkeypatch, raw_params, tmp_path, edit, lr):
    """start: finetune trains from the dense weights at finetune_lr (Torch-Pruning's recipe, 0.01);
    null, or a rewound baseline, at train.lr (the fixture's 0.05). Everything around training is faked."""
    from structlth import tickets
    from structlth.rounds import Context

    class Trained(Exception):
        pass

    def retrain(ctx, masks, pretrain_dir, checkpoint, identity, start_from, methods, dead_bn=True):
        raise Trained(ctx.params.train.lr, start_from)

    raw_params["baselines"]["tp_l1"].update(edit)
    monkeypatch.setattr(tickets, "read_metrics", lambda *a: {"sparsity": 0.5, "test_acc": 0.9})
    monkeypatch.setattr(tickets, "load_round", lambda *a: ({}, {}))
    monkeypatch.setattr(tickets, "file_digest", lambda *a: "")
    monkeypatch.setattr(tickets, "baseline_masks", lambda *a: ({}, {}))
    monkeypatch.setattr(tickets, "retrain", retrain)
    ctx = Context(parse_params(raw_params), synthetic_dataset(), torch.device("cpu"))
    with pytest.raises(Trained) as trained:
        tickets.make_ticket(ctx, "tp_l1", tmp_path, tmp_path, tmp_path, matched={"flops": 1, "round_to": 1})
    assert trained.value.args == (lr, "weights" if edit.get("start", "finetune") == "finetune" else "rewind")


def test_the_slimming_penalty_adds_lambda_times_the_sign_of_each_bn_scale_to_its_gradient():
    from structlth.training import bn_l1_penalty

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 1), torch.nn.BatchNorm2d(4))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([0.5, -0.2, 1.0, -3.0]))
    x = torch.randn(3, 2, 5, 5)

    def grads(lam):
        net.zero_grad()
        with bn_l1_penalty(net, lam):
            net(x).square().mean().backward()
        return net[1].weight.grad.clone(), net[0].weight.grad.clone()

    (plain, conv), (penalised, conv_penalised) = grads(0.0), grads(0.1)
    assert torch.allclose(penalised - plain, 0.1 * torch.tensor([1.0, -1.0, 1.0, -1.0]))
    assert torch.equal(conv, conv_penalised)  # only BN scales
    assert torch.equal(grads(0.0)[0], plain)  # the hooks are gone once the block closes


def test_a_baseline_prunes_its_own_regularised_dense_or_a_copy_of_the_shared_one(tmp_path, raw_params, data_dir):
    from structlth.artifacts import load_tensors
    from structlth.rounds import setup
    from structlth.training import baseline_dense, pretrain

    raw_params["baselines"]["tp_l1"].update(importance="bn_scale", sparsity_reg=0.5)
    raw_params["baselines"]["tp_copy"] = {**raw_params["baselines"]["tp_l1"], "sparsity_reg": 0.0}
    ctx = setup(parse_params(raw_params), data_dir)
    pretrain(ctx, tmp_path / "pretrain")
    baseline_dense(ctx, "tp_copy", tmp_path / "pretrain", tmp_path / "copy")
    for f in ("rewind.safetensors", "weights.safetensors", "metrics.json"):
        assert (tmp_path / "copy" / f).read_bytes() == (tmp_path / "pretrain" / f).read_bytes()
    metrics = baseline_dense(ctx, "tp_l1", tmp_path / "pretrain", tmp_path / "own")
    assert metrics["bn_l1"] == 0.5

    def bn_l1(d):
        weights = load_tensors(d / "weights.safetensors")[0]
        return sum(float(weights[k].abs().sum()) for k in weights if k.endswith("bn1.weight") or k.endswith("bn2.weight"))

    assert bn_l1(tmp_path / "own") < 0.9 * bn_l1(tmp_path / "pretrain")  # the same initialisation, smaller BN scales
