"""Mask algebra of the pruning methods: counts, order, structure, determinism."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import is_block_mask, synthetic_dataset
from structlth.config import RefillParams
from structlth.masks import ones_masks
from structlth.pruning import channel_prune, magnitude_prune, parts_for, refill, refill_count, regroup
from structlth.pruning.kinds.regroup import choose_columns, units


def _weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a.weight": torch.randn(16, 8, 3, 3, generator=g), "b.weight": torch.randn(32, 16, 1, 1, generator=g)}


def _ones(w):
    return {k: torch.ones_like(v, dtype=torch.bool) for k, v in w.items()}


def test_magnitude_prune_removes_exact_global_fraction_of_smallest():
    w = _weights()
    m1 = magnitude_prune(w, _ones(w), 0.2)
    total = sum(v.numel() for v in w.values())
    kept = sum(int(m.sum()) for m in m1.values())
    assert total - kept == round(0.2 * total)
    survivors = torch.cat([w[k][m1[k]].abs() for k in w])
    pruned = torch.cat([w[k][~m1[k]].abs() for k in w])
    assert pruned.max() <= survivors.min()


def test_magnitude_prune_compounds_and_never_resurrects():
    w = _weights()
    masks = _ones(w)
    total = sum(v.numel() for v in w.values())
    for k in range(1, 4):
        new = magnitude_prune(w, masks, 0.2)
        for n in w:
            assert not (new[n] & ~masks[n]).any(), "a pruned weight came back"
        masks = new
        density = sum(int(m.sum()) for m in masks.values()) / total
        assert abs(density - 0.8**k) < 0.01


def test_magnitude_prune_breaks_ties_deterministically():
    w = {"a.weight": torch.ones(4, 4, 1, 1)}
    m = magnitude_prune(w, _ones(w), 0.25)["a.weight"].flatten()
    assert m.tolist() == [False] * 4 + [True] * 12  # equal |w|: the first in flat order go


def test_channel_prune_zeroes_whole_rows_by_l1():
    w = {"a.weight": torch.arange(1.0, 11.0).view(10, 1, 1, 1).expand(10, 3, 3, 3).clone()}
    m = channel_prune(w, _ones(w), 0.3)["a.weight"]
    rows = m.flatten(1)
    assert ((rows.all(1)) | (~rows.any(1))).all(), "rows must be all-ones or all-zeros"
    assert (~rows.any(1)).nonzero().flatten().tolist() == [0, 1, 2]


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.5])
def test_refill_keeps_k_top_scored_rows(rate):
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(20, 4, 3, 3, generator=g) < 0.3
    scores = torch.rand(20, generator=g)
    nnz, n = int(mask.sum()), 4 * 9
    k = max(1, math.ceil(nnz / n + (20 - nnz / n) * rate))  # the default count: ceil, the paper's Table A3
    assert refill_count(mask, rate) == k
    out = refill(mask, scores, rate)
    assert out.shape == mask.shape
    rows = out.flatten(1)
    assert ((rows.all(1)) | (~rows.any(1))).all()
    kept = rows.all(1).nonzero().flatten()
    assert len(kept) == k
    assert set(kept.tolist()) == set(torch.topk(scores, k).indices.tolist())


def test_refill_is_strict_top_k_on_ties_and_at_least_one():
    mask = torch.zeros(6, 2, 1, 1, dtype=torch.bool)
    mask[0, 0] = True  # 1 of 12 weights: 0.5 full rows -> K = 1
    out = refill(mask, torch.ones(6), 0.0)
    assert out.flatten(1).all(1).tolist() == [True, False, False, False, False, False]


def test_refill_plus_adds_the_extra_share():
    mask = torch.zeros(10, 10, dtype=torch.bool)
    mask[:4] = True  # 4 full rows
    assert refill_count(mask, 0.0) == 4
    assert refill_count(mask, 0.5) == 7  # 4 + 6 * 0.5


def test_regroup_output_is_union_of_dense_blocks_inside_live_rows():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(64, 16, 3, 3, generator=g) < 0.3
    out = regroup(mask, parts=4, min_rows=8, t2=0.3, b2=4)
    assert out.shape == mask.shape and out.dtype == torch.bool
    assert not torch.equal(out, mask)
    assert is_block_mask(out, 8)
    assert not (out.flatten(1).any(1) & ~mask.flatten(1).any(1)).any(), "an empty row got a block"


def test_regroup_channel_granularity_blocks_cover_whole_kernels():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(32, 16, 3, 3, generator=g) < 0.2
    mask[:16, :6] = torch.rand(16, 6, 3, 3, generator=g) < 0.8  # rows 0-15 lean on channels 0-5
    mask[16:, 10:] = torch.rand(16, 6, 3, 3, generator=g) < 0.8  # rows 16-31 on channels 10-15
    out = regroup(mask, parts=2, min_rows=8, t2=0.5, b2=2, granularity="channel")
    per_channel = out.flatten(2)
    assert ((per_channel.all(2)) | (~per_channel.any(2))).all(), "a block cut through a kernel"
    assert is_block_mask(out, 8)
    assert torch.equal(out[:16].flatten(2).all(2).any(0), torch.arange(16) < 6)
    assert torch.equal(out[16:].flatten(2).all(2).any(0), torch.arange(16) >= 10)


def test_regroup_keeps_the_mask_where_no_block_forms():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(8, 4, 3, 3, generator=g) < 0.3
    assert torch.equal(regroup(mask, parts=1, min_rows=16), mask)  # too few rows
    assert torch.equal(regroup(mask, parts=1, min_rows=2, b2=10_000), mask)  # too few columns


def test_regroup_is_deterministic_for_a_seed():
    g = torch.Generator().manual_seed(3)
    mask = torch.rand(128, 32, 3, 3, generator=g) < 0.25
    a = regroup(mask, parts=4, min_rows=16, seed=7)
    b = regroup(mask, parts=4, min_rows=16, seed=7)
    assert torch.equal(a, b)


def _planted(holes=0.08, seed=0):
    g = torch.Generator().manual_seed(seed)
    part = torch.zeros(32, 200, dtype=torch.bool)
    part[:, :60] = torch.rand(32, 60, generator=g) >= holes
    part[:, 60:] = torch.rand(32, 140, generator=g) < 0.05
    return part


def test_density_rule_recovers_a_planted_block():
    chosen = choose_columns(_planted(), column_rule="density", t2=0.5, b2=4)
    assert chosen[:60].all() and not chosen[60:].any()


def test_budget_rule_keeps_the_parts_non_zero_count_in_its_top_units():
    part = _planted()
    chosen = choose_columns(part, column_rule="budget")
    per_row = part.sum().item() / part.shape[0]
    assert per_row <= int(chosen.sum()) < per_row + 1
    counts = part.sum(0)
    assert counts[chosen].min() >= counts[~chosen].max()


def test_budget_regroup_keeps_density_and_is_block_structured():
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(64, 16, 3, 3, generator=g) < 0.4
    for granularity in ("column", "channel"):
        out = regroup(mask, parts=4, min_rows=8, column_rule="budget", granularity=granularity)
        assert is_block_mask(out, 8)
        unit = 1 if granularity == "column" else 9
        assert 0 <= int(out.sum()) - int(mask.sum()) <= 4 * 16 * unit  # at most one unit per row more


def test_prefix_rule_satisfies_its_own_stopping_condition():
    part = _planted()
    chosen = choose_columns(part, column_rule="prefix", t1=1.5)
    inside = (part & chosen).sum(1)
    outside = (part & ~chosen).sum(1)
    assert (inside > 1.5 * outside).all()
    # minimal: dropping the chosen column with the fewest in-part non-zeros breaks the rule
    counts = part.sum(0).masked_fill(~chosen, 10**6)
    shorter = chosen.clone()
    shorter[counts.argmin()] = False
    assert not ((part & shorter).sum(1) > 1.5 * (part & ~shorter).sum(1)).all()
    # and on this planted block it recalls no more of it than the density rule
    assert chosen[:60].sum() <= choose_columns(part, column_rule="density", t2=0.5, b2=4)[:60].sum()


def test_units_and_parts_rule():
    m = torch.zeros(4, 3, 2, 2, dtype=torch.bool)
    m[0, 1, 0, 1] = True
    assert units(m, "channel").tolist()[0] == [0.0, 0.25, 0.0]
    assert units(m, "column").shape == (4, 12) and units(m, "column").sum() == 1
    assert parts_for(16, 32) == 1 and parts_for(512, 32) == 16


def test_refill_count_floor_and_ceil_at_the_rounding_edge():
    """[10, 4] mask with 33 survivors: 8.25 full rows. floor keeps 8, ceil 9 (the paper's
    Table A3: 80.29% remaining at IMP's 80%); exactly 8 full rows gives 8 either way."""
    mask = torch.zeros(10, 4, dtype=torch.bool)
    mask.view(-1)[:33] = True
    assert refill_count(mask, 0.0, "floor") == 8
    assert refill_count(mask, 0.0, "ceil") == 9 == refill_count(mask, 0.0)  # ceil is the library's default
    assert RefillParams(kind="refill").count == "ceil"  # ... and the params'
    mask.view(-1)[32] = False
    assert refill_count(mask, 0.0, "floor") == refill_count(mask, 0.0, "ceil") == 8
    assert refill_count(torch.ones(3, 2, dtype=torch.bool), 0.5, "ceil") == 3  # never above C_out
    mask.view(-1)[32] = True
    assert refill(mask, torch.arange(10.0), 0.0, "ceil").all(1).tolist() == [False] + [True] * 9  # the 9 top-scored rows


def test_small_part_joins_the_part_it_overlaps_most():
    """Parts of 16, 16 and 1 rows: the 1-row part reads block B's columns, so it joins B."""
    from structlth.pruning.kinds.regroup import merge_small_parts

    u = torch.zeros(33, 40)
    u[:16, :20] = 1
    u[16:32, 20:] = 1
    u[32, 22:26] = 1
    assignment = torch.tensor([0] * 16 + [1] * 16 + [2])
    assert merge_small_parts(u, assignment, 8).tolist() == [0] * 16 + [1] * 17
    assert merge_small_parts(u, assignment, 17).tolist() == assignment.tolist()  # no part is big enough


def test_regroup_drops_no_live_row():
    torch.manual_seed(3)
    for rows in (33, 50, 71):
        mask = torch.rand(rows, 16, 3, 3) < 0.4
        out = regroup(mask, parts=parts_for(rows, 16), min_rows=16, t2=0.3, b2=2)
        assert bool(out.flatten(1).any(1).all()), f"{rows} rows: a live row was dropped"


def test_drop_untrainable_removes_weights_reading_dead_inputs():
    """conv1 of the first block loses all rows but one: conv2's weights on the dead inputs (and
    rows of dead outputs) leave the mask, and the statistics count what remains."""
    from structlth.masks import drop_untrainable, mask_stats, ones_masks
    from structlth.models import build_model

    m = build_model("vgg16", 10, 1, 0.125)
    masks = ones_masks(m)
    first, second = list(masks)[:2]
    masks[first][1:] = False  # only output channel 0 of the first pruned conv stays live
    out = drop_untrainable(m, masks, 1)
    assert bool(out[second][:, 1:].any()) is False and bool(out[second][:, 0].all())
    assert mask_stats(m, out, (1, 1, 28, 28))["sparsity"] > mask_stats(m, masks, (1, 1, 28, 28))["sparsity"]
    assert all(torch.equal(out[n], masks[n]) for n in list(masks)[2:])


def test_channel_align_rounds_kept_channels_up():
    mask = torch.zeros(32, 4, dtype=torch.bool)
    mask.view(-1)[: 19 * 4] = True  # 19 full rows
    assert refill_count(mask, 0.0, "floor", 8) == 24
    assert refill_count(mask, 0.0, "floor", 16) == 32
    assert refill_count(mask, 0.0, "floor", 64) == 32  # never above C_out
    assert refill_count(mask, 0.0, "floor", 1) == 19


def test_channel_align_grows_a_block_by_its_most_used_units():
    from structlth.pruning.kinds.regroup import align_units

    chosen = torch.tensor([True, False, False, True, False])
    counts = torch.tensor([5.0, 1.0, 4.0, 5.0, 2.0])
    assert align_units(chosen, counts, 4).tolist() == [True, False, True, True, True]
    assert align_units(chosen, counts, 2).tolist() == chosen.tolist()
    mask = torch.rand(40, 24, 3, 3, generator=torch.Generator().manual_seed(1)) < 0.3
    out = regroup(mask, parts=2, min_rows=8, column_rule="budget", granularity="channel", input_align=8)
    for rows in (out.flatten(2).any(2)).unique(dim=0):
        assert int(rows.sum()) % 8 == 0 or int(rows.sum()) == 0  # every block reads a multiple of 8 input channels


def test_is_channel_wise_allows_dead_input_columns_but_not_partial_rows():
    from structlth.export import is_channel_wise

    m = torch.zeros(4, 3, 2, 2, dtype=torch.bool)
    m[[0, 2], :2] = True  # two whole channels over the two live inputs
    assert is_channel_wise(m)
    m[2, 0, 0, 0] = False
    assert not is_channel_wise(m)
    assert is_channel_wise(torch.zeros(3, 2, dtype=torch.bool))


def test_weight_scores_by_hand():
    from structlth.pruning.kinds.refill import weight_scores

    w = {"w": torch.tensor([[1.0, -2.0], [3.0, 0.5], [-4.0, 1.0]])}
    m = {"w": torch.tensor([[True, True], [False, True], [True, False]])}
    assert weight_scores("magnitude", w, m)["w"].tolist() == [3.0, 0.5, 4.0]  # L1 of survivors
    assert weight_scores("remain", w, m)["w"].tolist() == [2.0, 1.0, 1.0]  # how many survive


def _one_conv_net() -> torch.nn.Module:
    """conv 1 -> 2 (1x1, weights 2 and -1, no bias) -> flatten -> linear 8 -> 2 (fixed weights)."""
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 1, bias=False), torch.nn.Flatten(), torch.nn.Linear(8, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([2.0, -1.0]).view(2, 1, 1, 1))
        net[2].weight.copy_(torch.arange(16.0).view(2, 8) / 10)
        net[2].bias.zero_()
    return net


@pytest.mark.parametrize("criterion", ["l1", "l2", "saliency"])
def test_activation_scores_by_hand_leave_no_hook_and_restore_the_mode(criterion):
    from structlth.pruning.kinds.refill import activation_scores

    net = _one_conv_net().train()
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).view(1, 1, 2, 2)
    y = torch.tensor([1])
    a = torch.cat([2 * x, -x], 1)  # the conv's output [1, 2, 2, 2]
    if criterion == "l1":
        want = [20.0, 10.0]  # sum |a|
    elif criterion == "l2":
        want = [2 * 30**0.5, 30**0.5]  # sqrt(sum a^2)
    else:  # sum |a * dL/da| with dL/da = W_fc^T (softmax(z) - onehot(y)), reshaped like a
        z = net[2](a.flatten(1))
        g = (torch.softmax(z, 1) - torch.nn.functional.one_hot(y, 2)) @ net[2].weight
        want = (a * g.view_as(a)).abs().sum((0, 2, 3)).tolist()
    got = activation_scores(criterion, net, ["0.weight"], [(x, y)])["0.weight"]
    assert got.tolist() == pytest.approx(want, rel=1e-5)
    assert not net[0]._forward_hooks and net.training  # hooks removed, training mode back


def test_channel_prune_keeps_at_least_one_channel_per_layer():
    w = {"w": torch.tensor([[1.0, 1.0], [5.0, 5.0], [0.1, 0.1]]).view(3, 2, 1, 1)}
    m = {"w": torch.ones(3, 2, 1, 1, dtype=torch.bool)}
    m["w"][2] = False  # already dead
    out = channel_prune(w, m, 0.9)["w"]  # round(0.9 * 2 alive) = 2 would leave none
    assert out.flatten(1).all(1).tolist() == [False, True, False]  # the strongest survives


def test_regroup_falls_back_to_the_mask_without_edges_and_clamps_parts():
    from structlth.pruning.kinds.regroup import partition_rows

    diagonal = torch.eye(6).bool().view(6, 6, 1, 1)  # no column is shared: no hyperedge
    assert partition_rows(diagonal.flatten(1).float(), 3).tolist() == [0, 0, 1, 1, 2, 2]  # balanced, zero cut
    assert partition_rows(torch.ones(3, 4), parts=10).max() <= 2  # more parts than rows: one row each at most
    assert torch.equal(regroup(diagonal, parts=2, min_rows=4, t2=0.5, b2=1), diagonal)  # no block: the mask itself


def test_column_rules_choose_exactly_the_units_their_definition_names():
    part = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 0], [0, 1, 0, 1]], dtype=torch.float)  # unit counts 3, 3, 1, 1
    assert choose_columns(part, column_rule="density", t2=0.5, b2=2).tolist() == [True, True, False, False]  # count >= 2
    assert choose_columns(part, column_rule="density", t2=0.8, b2=1) is None  # no unit in 80% of the rows
    assert choose_columns(part, column_rule="density", t2=0.5, b2=3) is None  # fewer than b2 units
    assert choose_columns(part, column_rule="budget").tolist() == [True, True, False, False]  # ceil(8 / 4) = 2 best units


def test_every_live_row_of_a_formed_part_is_in_its_block():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(64, 16, 3, 3, generator=g) < 0.3
    out = regroup(mask, parts=4, min_rows=2, t2=0.3, b2=4)
    assert torch.equal(out.flatten(1).any(1), mask.flatten(1).any(1))  # no live row dropped, no dead row revived


def test_hyperedges_merge_identical_edges_and_sample_down_to_the_pin_budget():
    from structlth.pruning.kinds.regroup import hyperedges

    u = torch.tensor([[1, 1, 0, 1], [1, 1, 1, 0], [0, 0, 1, 1]], dtype=torch.float)  # units 0 and 1 join rows {0, 1}
    edges, weights = hyperedges(u)
    assert (edges, weights) == ([[0, 1], [1, 2], [0, 2]], [2, 1, 1])  # unit order, duplicates counted
    big = (torch.rand(64, 400, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    full, _ = hyperedges(big)
    sample, w = hyperedges(big, max_pins=2000, seed=3)
    assert 1000 < sum(map(len, sample)) <= 2000 and set(map(tuple, sample)) < set(map(tuple, full))
    assert hyperedges(big, max_pins=2000, seed=3) == (sample, w)  # seeded
    assert hyperedges(big, max_pins=2000, seed=4)[0] != sample
    assert hyperedges(big, max_pins=10**9) == hyperedges(big)  # under budget: all of it


def test_regroup_with_a_pin_budget_is_deterministic_and_under_budget_changes_nothing():
    mask = torch.rand(64, 32, 3, 3, generator=torch.Generator().manual_seed(1)) < 0.4
    opts = dict(parts=4, min_rows=8, granularity="channel", hypergraph="column", column_rule="budget")
    assert torch.equal(regroup(mask, max_pins=10**9, **opts), regroup(mask, **opts))
    a, b = regroup(mask, max_pins=1000, **opts), regroup(mask, max_pins=1000, **opts)
    assert torch.equal(a, b)


def test_balanced_assign_respects_capacity_and_takes_the_best_pairs_first():
    from structlth.pruning.kinds.regroup import balanced_assign

    score = torch.tensor([[5.0, 1.0], [4.0, 0.0], [3.0, 2.0], [0.0, 1.0]])
    assert balanced_assign(score, 2).tolist() == [0, 0, 1, 1]  # item 2 wants part 0 but it is full
    assert balanced_assign(score, 4).tolist() == [0, 0, 0, 1]


def test_disjoint_blocks_split_rows_and_input_channels():
    """Every live row and every used input channel belongs to exactly one block; the block count
    follows the layer's density (0.25 -> 4 blocks), so the ticket keeps about its density."""
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(64, 32, 3, 3, generator=g) < 0.25
    mask[7] = False  # a dead row stays dead
    out = regroup(mask, parts=4, min_rows=8, granularity="channel", inputs="disjoint")
    rows = out.flatten(2).any(2)  # [C_out, C_in] channel use
    patterns = torch.unique(rows[rows.any(1)], dim=0)
    assert len(patterns) == 4 and bool((patterns.sum(0) == 1).all())  # disjoint, covering every channel
    assert not out[7].any() and bool(out.flatten(1).any(1).sum() == 63)
    assert bool((out.flatten(2).all(2) == rows).all())  # whole input channels
    assert abs(float(out.float().mean()) - 63 / 64 / 4) < 0.03
    assert torch.equal(out, regroup(mask, parts=4, min_rows=8, granularity="channel", inputs="disjoint"))
    from structlth.pruning.kinds.regroup import layer_parts

    assert layer_parts(mask, rows_per_part=8, min_rows=8, inputs="disjoint") == 4
    assert layer_parts(mask, rows_per_part=8, min_rows=32, inputs="disjoint") == 1  # 63 rows hold one block of >= 32


def test_disjoint_blocks_need_channel_granularity():
    from structlth.config import RegroupParams

    with pytest.raises(ValueError, match="granularity 'channel'"):
        regroup(torch.ones(16, 4, 3, 3, dtype=torch.bool), parts=2, min_rows=2, inputs="disjoint")
    with pytest.raises(ValueError, match="needs granularity: channel"):
        RegroupParams(kind="regroup", granularity="column", inputs="disjoint")


@pytest.mark.parametrize("name", ["refill", "regroup"])
def test_every_ticket_param_reaches_its_post_processing(params, name):
    """ticket_masks takes a ticket's whole params section (init included) to masks of the
    ticket's structure: a field the post-processing does not take must not reach it."""
    from structlth.export import is_channel_wise
    from structlth.rounds import Context
    from structlth.tickets import ticket_masks

    ctx = Context(params, synthetic_dataset(), torch.device("cpu"))
    model = ctx.model()
    state = model.state_dict()
    masks = magnitude_prune(state, ones_masks(model), 0.6)
    spec = params.tickets[name].model_copy(update={"init": "random"})
    out = ticket_masks(ctx, spec, state, masks)
    assert {k: v.shape for k, v in out.items()} == {k: v.shape for k, v in masks.items()}
    if name == "refill":
        assert all(is_channel_wise(m) for m in out.values())
    else:
        assert all(is_block_mask(m.bool(), spec.min_rows) for m in out.values())
