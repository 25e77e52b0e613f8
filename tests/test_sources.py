"""Mask sources other than IMP (OMP, random, SNIP, SynFlow), checked on cases small enough to
score by hand, and as the pipeline calls them."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from helpers import synthetic_dataset
from structlth.artifacts import save_tensors
from structlth.masks import density, ones_masks
from structlth.pruning import magnitude_prune
from structlth.pruning.sources.omp import omp_masks
from structlth.pruning.sources.random import random_masks
from structlth.pruning.sources.snip import snip_scores
from structlth.pruning.sources.synflow import synflow_masks, synflow_scores
from structlth.pruning.sources.topk import keep_top


def test_keep_top_keeps_the_highest_scores_across_layers():
    scores = {"a": torch.tensor([3.0, 1.0]), "b": torch.tensor([2.0, 5.0])}
    out = keep_top(scores, 0.5)
    assert out["a"].tolist() == [True, False] and out["b"].tolist() == [False, True]
    alive = {"a": torch.tensor([False, True]), "b": torch.tensor([True, True])}  # a's best is already pruned
    out = keep_top(scores, 0.5, alive)
    assert out["a"].tolist() == [False, False] and out["b"].tolist() == [True, True]


def test_omp_is_one_global_magnitude_step_and_random_keeps_each_layers_share():
    g = torch.Generator().manual_seed(0)
    w = {"a": torch.randn(4, 3, generator=g), "b": torch.randn(10, generator=g)}
    ones = {n: torch.ones_like(t, dtype=torch.bool) for n, t in w.items()}
    assert all(torch.equal(omp_masks(w, 0.25)[n], magnitude_prune(w, ones, 0.75)[n]) for n in w)
    r = random_masks({n: t.shape for n, t in w.items()}, 0.3, seed=1)
    assert int(r["a"].sum()) == round(0.3 * 12) and int(r["b"].sum()) == 3
    assert all(torch.equal(r[n], random_masks({n: t.shape for n, t in w.items()}, 0.3, seed=1)[n]) for n in w)
    assert any(not torch.equal(r[n], random_masks({n: t.shape for n, t in w.items()}, 0.3, seed=2)[n]) for n in w)


def test_snip_scores_are_weight_times_gradient_of_the_loss():
    """One linear layer W = [[1, 2], [0, -1]], x = [1, 1], label 0: z = Wx = [3, -1],
    dL/dW = (softmax(z) - e0) x^T, so |W * dL/dW| = [[q, 2q], [0, q]] with q = 1 / (1 + e^4)."""
    net = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
    scores = snip_scores(net, ["weight"], [(torch.tensor([[1.0, 1.0]]), torch.tensor([0]))])
    q = 1 / (1 + math.exp(4))
    assert torch.allclose(scores["weight"], torch.tensor([[q, 2 * q], [0.0, q]]), atol=1e-6)
    assert net.weight.grad is None  # the model itself is left untouched


def test_synflow_scores_are_the_path_products_through_each_weight():
    """1 -> 2 -> 1 linear net, W1 = [a, b]^T = [1, -2]^T, W2 = [c, d] = [3, 0.5]: R = |a||c| + |b||d|,
    so every weight on the path through hidden unit i scores that path's product: 3 and 1."""
    net = nn.Sequential(nn.Linear(1, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0], [-2.0]]))
        net[1].weight.copy_(torch.tensor([[3.0, 0.5]]))
    names = ["0.weight", "1.weight"]
    ones = {n: torch.ones_like(dict(net.named_parameters())[n], dtype=torch.bool) for n in names}
    s = synflow_scores(net, ones, (1, 1))
    assert s["0.weight"].flatten().tolist() == [3.0, 1.0] and s["1.weight"].flatten().tolist() == [3.0, 1.0]
    m = synflow_masks(net, names, 0.5, (1, 1), iterations=3)
    assert m["0.weight"].flatten().tolist() == [True, False] and m["1.weight"].flatten().tolist() == [True, False]
    assert net[0].weight.detach()[1, 0].item() == -2.0  # the model itself is left untouched


def test_synflow_on_a_resnet50_ranks_finite_scores_not_layer_order():
    """R on a ResNet-50 at init is about 1e63, past float32's range: scores cast to float32 tie at
    inf, and the global top-k keeps the earliest layers whole and empties the last ones."""
    from structlth.models import build_model

    torch.manual_seed(0)
    net = build_model("resnet50", 10)
    names = [n for n, p in net.named_parameters() if p.dim() > 1]
    params = dict(net.named_parameters())
    scores = synflow_scores(net, {n: torch.ones_like(params[n], dtype=torch.bool) for n in names}, (1, 3, 8, 8))
    assert all(torch.isfinite(s).all() for s in scores.values())
    assert max(float(s.max()) for s in scores.values()) > torch.finfo(torch.float32).max  # float32 would have overflowed
    kept = keep_top(scores, 0.5)
    densities = [float(kept[n].float().mean()) for n in names]
    assert sum(0 < d < 1 for d in densities) > len(names) // 2  # pruned across the net, not a prefix of whole layers
    assert densities[-1] > 0.5  # the classifier, last in layer order, keeps most of its weights


@pytest.mark.parametrize("source", ["omp", "random", "snip", "synflow"])
def test_a_ticket_source_gives_a_mask_at_the_imp_rounds_density(tmp_path, params, source):
    from structlth.rounds import Context
    from structlth.tickets import source_masks

    ctx = Context(params, synthetic_dataset(), torch.device("cpu"))
    dense = ctx.model()
    torch.manual_seed(1)
    with torch.no_grad():
        for p in dense.parameters():
            p.add_(0.1 * torch.randn_like(p))  # "trained": not the initialisation
    save_tensors(tmp_path / "weights.safetensors", dense.state_dict(), {**ctx.model_meta(), "kind": "weights"})
    spec = params.tickets["regroup"].model_copy(update={"source": source, "source_iterations": 5})
    state, masks = source_masks(ctx, spec, 0.3, tmp_path)
    assert set(masks) == set(ones_masks(dense, params.prune.prunable))
    assert density(masks) <= 0.3 + 1e-9 and density(masks) > 0.2  # dead inputs leave too (drop_untrainable)
    assert all(torch.equal(state[k], v) for k, v in dense.state_dict().items())  # refill scores the trained dense net
    again = source_masks(ctx, spec, 0.3, tmp_path)[1]
    assert all(torch.equal(masks[n], again[n]) for n in masks)  # deterministic
