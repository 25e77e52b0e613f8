"""A refill ticket's dropped channels, two ways (RefillParams.readers): drop (a smaller dense
net: the channel's BN is masked and the weights reading it go) or keep (the paper's code: they
stay and train, the channel emits relu(BN bias), and the ticket runs as an unstructured one)."""

from __future__ import annotations

import pytest
import torch

from helpers import synthetic_dataset
from structlth.config import Augment, TrainParams, parse_params
from structlth.errors import ParamsError
from structlth.masks import density, effective_flops, layer_effective_flops, ones_masks, row_alive, row_density, training_masks
from structlth.models import build_model
from structlth.pruning import magnitude_prune
from structlth.rounds import Context
from structlth.speedup.choice import Probe, fast_models
from structlth.speedup.engines import masked_reference
from structlth.train import train

HP = TrainParams(epochs=1, lr=0.1, momentum=0.9, weight_decay=5e-4, rewind_epoch=0, schedule="cosine")
CONV, NEXT, BN = "layers.0.conv1.weight", "layers.0.conv2.weight", "layers.0.bn1"


def _net():
    torch.manual_seed(0)
    return build_model("resnet20", 4, 1, 0.25)


def _one_channel_left(model):
    """Every weight kept but layers.0.conv1's rows after the first: channels 1.. of its output have no weight."""
    masks = ones_masks(model)
    masks[CONV] = torch.zeros_like(masks[CONV])
    masks[CONV][0] = True
    return masks


@pytest.mark.parametrize("readers", ["drop", "keep"])
def test_refill_drops_or_keeps_the_weights_that_read_its_dropped_channels(raw_params, tmp_path, readers):
    from structlth.tickets import structured_masks

    raw_params["tickets"]["refill"]["readers"] = readers
    p = parse_params(raw_params)
    ctx = Context(p, synthetic_dataset(), torch.device("cpu"))
    model = ctx.model()
    state = {n: t.detach() for n, t in model.state_dict().items()}
    imp = magnitude_prune({n: state[n] for n in ones_masks(model, p.prune.prunable)}, ones_masks(model, p.prune.prunable), 0.8)
    masks = structured_masks(ctx, p.tickets["refill"], state, imp, tmp_path)[0]  # source imp: no pretrain read
    inner = [n for n in masks if n.endswith("conv2.weight")]  # reads only its block's conv1
    readers_of_dropped = [masks[n][:, ~row_alive(masks[n.replace("conv2", "conv1")])] for n in inner]
    assert any(r.numel() for r in readers_of_dropped)  # some channel was dropped
    if readers == "keep":
        assert all(bool(r[row_alive(masks[n])].all()) for r, n in zip(readers_of_dropped, inner))
        assert density(masks) == pytest.approx(row_density(masks))  # whole rows: the paper's count
        assert (p.structure_of("refill"), p.dead_bn("refill")) == ("unstructured", False)
        flops = layer_effective_flops(model, masks, ctx.input_shape, dead_bn=False)  # every kept weight computes
        assert all(
            k == d * int(masks[f"{n}.weight"].sum()) // masks[f"{n}.weight"].numel()
            for n, (d, k) in flops.items()
            if f"{n}.weight" in masks
        )
        assert effective_flops(model, masks, ctx.input_shape, dead_bn=False)[1] > effective_flops(model, masks, ctx.input_shape)[1]
    else:
        assert not any(bool(r.any()) for r in readers_of_dropped)
        assert density(masks) < row_density(masks)
        assert (p.structure_of("refill"), p.dead_bn("refill")) == ("channel", True)


def test_a_kept_channel_with_no_weight_trains_its_bn_bias_and_emits_it():
    model = _net()
    masks = _one_channel_left(model)
    tm = training_masks(model, masks, 1, dead_bn=False)
    assert not any(n.startswith(BN) for n in tm)  # no BN mask
    with torch.no_grad():
        model.layers[0].bn1.bias.fill_(0.5)  # as at a rewind point (at 0 ReLU passes no gradient)
    before = model.layers[0].bn1.bias.detach().clone()
    train(model, synthetic_dataset(), HP, Augment(crop_padding=2, hflip=True), 32, tm, epochs=1, log=lambda s: None)
    bn = model.layers[0].bn1
    assert (bn.bias[1:] != before[1:]).any()  # the dropped channels' BN trains
    model.eval()
    seen = {}
    bn.register_forward_hook(lambda m, i, o: seen.update(out=o))
    model(torch.randn(2, 1, 28, 28))
    const = bn.bias[1:] - bn.running_mean[1:] * bn.weight[1:] / torch.sqrt(bn.running_var[1:] + bn.eps)
    assert torch.allclose(seen["out"][:, 1:], const[None, :, None, None].expand_as(seen["out"][:, 1:]), atol=1e-6)
    assert (seen["out"][:, 1:].abs() > 0).any()


def test_a_ticket_that_keeps_its_readers_is_verified_against_itself_as_it_trained():
    model = _net()
    masks = _one_channel_left(model)
    with torch.no_grad():
        model.layers[0].bn1.bias.uniform_(0.5, 1.0)  # dropped channels that emit a constant
    x = torch.randn(4, 1, 28, 28)
    kept, dropped = masked_reference(model, masks, 1, dead_bn=False), masked_reference(model, masks, 1)
    assert not torch.allclose(kept(x), dropped(x), atol=1e-4)
    probe = Probe(x, repeats=1, warmup=0)
    for engine, fast in fast_models("unstructured", model, masks, 1, probe, dead_bn=False).items():
        assert torch.allclose(fast(x), kept(x), atol=1e-4, rtol=1e-4), engine
    with pytest.raises(ValueError, match="dead_bn"):
        fast_models("channel", model, masks, 1, probe, dead_bn=False)


def test_a_group_aware_chain_refuses_a_ticket_that_keeps_its_readers(raw_params):
    raw_params["tickets"]["refill"]["readers"] = "keep"
    raw_params["group_chains"] = {"refill_chain": {"ticket": "refill"}}
    with pytest.raises(ParamsError, match="readers: keep"):
        parse_params(raw_params)
