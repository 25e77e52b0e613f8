"""Mask algebra on a net small enough to count by hand: channel liveness across layers, the
FLOPs every time/FLOP figure is measured against, and the slim net those imply."""

from __future__ import annotations

import torch
from torch import nn

from helpers import randomised_model
from structlth.liveness import bn_masks
from structlth.masks import effective_flops, layer_effective_flops, mask_stats
from structlth.speedup.engines import masked_reference
from structlth.speedup.slim import kept_channels, slim_model


def _net() -> nn.Module:
    """conv 1->4 (3x3, pad 1) -> BN -> ReLU -> conv 4->2 (1x1) -> BN -> ReLU -> pool -> linear 2->3."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 2, 1, bias=False),
        nn.BatchNorm2d(2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(2, 3),
    ).eval()
    for bn in (net[1], net[4]):  # BN shifts that would leak into dead channels if not masked
        bn.bias.data.uniform_(0.5, 1.0)
        bn.running_mean.uniform_(-1, 1)
    return net


def _masks() -> dict[str, torch.Tensor]:
    m1 = torch.zeros(4, 1, 3, 3, dtype=torch.bool)
    m1[:2] = True  # conv1: output channels 2 and 3 are dead
    m2 = torch.zeros(2, 4, 1, 1, dtype=torch.bool)
    m2[0, 2:] = True  # conv2 row 0 survives but reads only the dead channels 2, 3
    m2[1, :3] = True  # row 1 reads the live channels 0, 1 and the dead channel 2
    return {"0.weight": m1, "3.weight": m2}


def test_flops_count_only_weights_on_live_paths():
    # one 4x4 sample; torch counts 2 FLOPs per multiply-add
    dense = {"0": 2 * 16 * 4 * 9, "3": 2 * 16 * 2 * 4, "8": 2 * 2 * 3}  # 1152, 256, 12
    per_layer = layer_effective_flops(_net(), _masks(), (1, 1, 4, 4))
    assert {n: d for n, (d, _) in per_layer.items()} == dense
    assert per_layer["0"][1] == 1152 * 18 // 36  # two live rows of nine weights
    assert per_layer["3"][1] == 256 * 2 // 8  # row 0 reads dead inputs, row 1 one: only row 1's two live weights
    assert per_layer["8"][1] == 12 * 3 // 6  # the classifier's column for dead channel 0 is dead
    assert effective_flops(_net(), _masks(), (1, 1, 4, 4)) == (1420, 576 + 64 + 6)


def test_mask_stats_by_hand():
    s = mask_stats(_net(), _masks(), (1, 1, 4, 4))
    assert s["sparsity"] == 1 - (18 + 5) / (36 + 8)  # what the masks keep (drop_untrainable prunes further)
    assert s["params_total"] == 36 + 8 + 8 + 4 + 9 and s["params_kept"] == 65 - (36 - 18) - (8 - 5)
    assert s["flops"] == 646 and s["flops_dense"] == 1420


def test_a_row_reading_only_dead_inputs_is_dead_through_bn_kept_channels_and_slim():
    net, masks = _net(), _masks()
    bn = bn_masks(net, masks, 1)
    assert bn["1.weight"].tolist() == [True, True, False, False]
    assert bn["4.weight"].tolist() == [False, True]  # row 0 of conv2 survives but is dead
    assert kept_channels(net, masks, 1) == {"0": [0, 1], "3": [1]}
    x = torch.randn(5, 1, 4, 4)
    with torch.no_grad():
        assert torch.allclose(slim_model(net, masks, 1)(x), masked_reference(net, masks, 1)(x), atol=1e-6)


def test_a_fully_dead_layer_kills_everything_after_it_and_slims_exactly():
    m = randomised_model("vgg16", 0.125, in_ch=1)
    masks = {n: torch.ones_like(p, dtype=torch.bool) for n, p in m.named_parameters() if p.ndim == 4}
    dead = next(n for n in masks if n != "features.0.weight")
    masks[dead] = torch.zeros_like(masks[dead])
    flops = layer_effective_flops(m, masks, (1, 1, 32, 32))
    after = list(flops)[list(flops).index(dead.removesuffix(".weight")) :]
    assert all(flops[n][1] == 0 for n in after if n != list(flops)[-1])  # convs after it compute nothing
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(slim_model(m, masks, 1)(x), masked_reference(m, masks, 1)(x), atol=1e-5)


def test_row_density_counts_whole_rows_with_any_survivor():
    import torch

    from structlth.masks import row_density

    conv = torch.zeros(4, 2, 3, 3, dtype=torch.bool)
    conv[0, 0, 0, 0] = True  # one weight keeps row 0 whole: 18 of the layer's 72
    conv[2] = True  # a full row: 18 more
    fc = torch.zeros(2, 8, dtype=torch.bool)
    fc[1, :3] = True  # 8 of 16
    assert row_density({"conv": conv, "fc": fc}) == (18 + 18 + 8) / (72 + 16)
