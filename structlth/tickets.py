"""Ticket making: a structured ticket from one IMP round (its mask post-processed by the ticket's
kind, from its mask source), a Torch-Pruning baseline at a ticket's FLOPs, and a round of a
group-aware chain. Each method is loaded by name through structlth.pruning.registry, so this
module, and every stage that imports it, holds no method's code: a stage adds only its own.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from structlth.artifacts import State
from structlth.config import RefillParams, RegroupParams, TorchPruningParams, params_hash
from structlth.data import scoring_batches
from structlth.masks import Masks, density, drop_untrainable, effective_flops, ones_masks
from structlth.pruning import registry
from structlth.pruning.magnitude import magnitude_prune
from structlth.rounds import Context, file_digest, load_round, load_state, read_metrics, save_round
from structlth.train import state_of
from structlth.training import chain_round, retrain, round_metrics


def method_inputs(ctx: Context) -> registry.Inputs:
    """What a method may read (structlth.pruning.registry.Inputs) in this stage's context."""
    p = ctx.params
    return registry.Inputs(
        model=ctx.model,
        batches=lambda n: scoring_batches(ctx.data.train, ctx.data, p.data.batch_size, n, p.train.seed),
        device=ctx.device,
        input_shape=ctx.input_shape,
        in_channels=ctx.data.in_channels,
        seed=p.train.seed,
    )


def methods(spec) -> tuple[str, ...]:
    """The modules beyond training's whose code makes a ticket of `spec`: this one and its methods'."""
    return (__name__, *registry.modules(spec))


def source_masks(ctx: Context, spec: RefillParams | RegroupParams, density: float, pretrain_dir: Path) -> tuple[State, Masks]:
    """A ticket's unstructured mask from spec.source at `density` (the IMP round's), and the
    weights refill scores channels by: the trained dense net's (structlth.pruning.sources)."""
    model = ctx.model()
    dense, _ = load_state(ctx, pretrain_dir / "weights.safetensors", model, {"kind": "weights"})
    names = list(ones_masks(model, ctx.params.prune.prunable))
    masks = registry.source(spec).source_masks(spec, {n: dense[n] for n in names}, density, method_inputs(ctx))
    return dense, drop_untrainable(ctx.model(), masks, ctx.data.in_channels)


def ticket_masks(ctx: Context, spec: RefillParams | RegroupParams, state: State, masks: Masks) -> Masks:
    """Post-process one round's masks (state: its trained weights) into a ticket's masks by spec.kind."""
    return registry.kind(spec).ticket_masks(spec, state, masks, method_inputs(ctx))


def structured_masks(
    ctx: Context, spec: RefillParams | RegroupParams, state: State, masks: Masks, pretrain_dir: Path
) -> tuple[Masks, dict]:
    """A refill or regroup ticket's masks from one IMP round (state, masks): its source's mask
    at the round's density (spec.source; the round's own for imp), post-processed, untrainable
    weights dropped (unless the ticket keeps the readers of dropped channels: RefillParams.readers);
    and what the metrics record of the source."""
    extra = {}
    if spec.source != "imp":
        state, masks = source_masks(ctx, spec, density(masks), pretrain_dir)
        extra = {"source": spec.source, "source_density": density(masks)}
    new = ticket_masks(ctx, spec, state, masks)
    return (drop_untrainable(ctx.model(), new, ctx.data.in_channels) if spec.dead_bn else new), extra


def baseline_masks(ctx: Context, spec: TorchPruningParams, target: int, round_to: int, pretrain_dir: Path) -> tuple[Masks, dict]:
    """Torch-Pruning's channel masks of the trained dense net at no more than `target` FLOPs
    (the matched ticket's at this round), kept channels a multiple of `round_to`; and what the
    metrics record of it."""
    spec = spec.model_copy(update={"round_to": round_to})
    model = ctx.model()
    model.load_state_dict(load_state(ctx, pretrain_dir / "weights.safetensors", model, {"kind": "weights"})[0])
    in_ch = ctx.data.in_channels
    new, ratio = registry.kind(spec).baseline_masks(
        spec,
        model,
        ones_masks(model, ctx.params.prune.prunable),
        target,
        lambda m: effective_flops(model, drop_untrainable(model, m, in_ch), ctx.input_shape)[1],
        method_inputs(ctx),
    )
    return drop_untrainable(model, new, in_ch), {
        "matched": spec.match,
        "matched_flops": target,
        "pruning_ratio": ratio,
        "start": spec.start,
    }


def make_ticket(
    ctx: Context,
    name: str,
    imp_dir: Path,
    pretrain_dir: Path,
    out_dir: Path,
    checkpoint: Path | None = None,
    matched: dict | None = None,
) -> dict:
    """A structured ticket from IMP round k: post-process its mask (or, for a torch_pruning
    baseline, prune the dense net to `matched`: the 'flops' of its matched ticket at round k,
    kept channels a multiple of 'round_to'; structlth.rounds.matched), rewind (or start from the
    weights the ticket's `init` / `start` names), retrain. metrics.json records that start."""
    p = ctx.params
    spec = p.ticket_spec(name)
    model = ctx.model()
    source = read_metrics(imp_dir / "metrics.json", ("sparsity", "test_acc"))  # every input read before training
    state, masks = load_round(ctx, imp_dir, model)
    extra, start_from = {}, getattr(spec, "init", "rewind")
    identity = params_hash(p.data, p.model, p.train, spec) + file_digest(imp_dir / "mask.safetensors", imp_dir / "weights.safetensors")
    if isinstance(spec, TorchPruningParams):
        if matched is None:
            raise ValueError(f"{name}: a torch_pruning baseline needs the FLOPs of its matched ticket ({spec.match})")
        new, extra = baseline_masks(ctx, spec, matched["flops"], matched["round_to"], pretrain_dir)
        start_from = "weights" if spec.start == "finetune" else "rewind"
        identity += f"{matched['flops']}/{matched['round_to']}"
        if spec.start == "finetune" and spec.finetune_lr is not None:
            ctx = replace(ctx, params=p.model_copy(update={"train": p.train.model_copy(update={"lr": spec.finetune_lr})}))
    else:
        new, extra = structured_masks(ctx, spec, state, masks, pretrain_dir)
    align = getattr(spec, "align_field", None)
    if align and getattr(spec, align) > 1:  # what alignment gave back: the sparsity the ticket had before it
        unaligned = structured_masks(ctx, spec.model_copy(update={align: 1}), state, masks, pretrain_dir)[0]
        extra["unaligned_sparsity"] = 1 - density(unaligned)
    model, result = retrain(ctx, new, pretrain_dir, checkpoint, identity, start_from, methods(spec), p.dead_bn(name))
    metrics = round_metrics(
        ctx,
        model,
        new,
        result,
        p.dead_bn(name),
        source_sparsity=source["sparsity"],
        source_test_acc=source["test_acc"],
        kind=spec.kind,
        **{"start": start_from, **extra},  # a baseline records its own start (finetune | rewind)
    )
    save_round(ctx, out_dir, state_of(model), new, metrics, kind=name, test_pred=result.test_pred)
    return metrics


def group_round(ctx: Context, chain: str, prev_dir: Path, pretrain_dir: Path, out_dir: Path, checkpoint: Path | None = None) -> dict:
    """One round of group-aware chain `chain` (the paper's Alg. 4): magnitude pruning at
    prune.rate, then the chain's ticket post-processing, before rewinding and retraining."""
    p = ctx.params
    spec = p.tickets[p.group_chains[chain].ticket]

    def prune(state: State, masks: Masks) -> Masks:
        return structured_masks(ctx, spec, state, magnitude_prune(state, masks, p.prune.rate), pretrain_dir)[0]

    return chain_round(ctx, chain, prune, spec, prev_dir, pretrain_dir, out_dir, checkpoint, methods(spec))
