"""The training stages' bodies: dense pretraining, a round of a pruning chain, and the retraining
every round and ticket shares (rewind, apply the mask, train, write the round).

Pruning methods other than the chains' own magnitude pruning are not imported here: a ticket's
post-processing lives in structlth.tickets, which loads its method by name.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from pydantic import BaseModel
from torch import nn

from structlth import distributed as dist
from structlth.artifacts import State, save_tensors, staged_dir, write_json
from structlth.codedeps import code_manifest, manifest_digest
from structlth.config import params_hash
from structlth.masks import Masks, check_masks, drop_untrainable, mask_stats, ones_masks, training_masks
from structlth.models import build_model
from structlth.pruning.magnitude import channel_prune, magnitude_prune
from structlth.rounds import Context, file_digest, load_round, load_state, save_predictions, save_round
from structlth.train import TrainResult, state_of, train

RANDOM_INIT_SEED = 10_007  # a re-initialised ticket's seed is train.seed + this: no training seed's init
Prune = Callable[[State, Masks], Masks]  # a chain's pruning step: round k-1's (state, masks) -> round k's masks


def code_digest(*modules: str) -> str:
    """Digest of the library files a training run executes: this module's import closure and
    the closures of `modules` (dotted names: the stage's own entry module and its methods). Part
    of every checkpoint's identity, so a run never resumes from a checkpoint that other code wrote."""
    return manifest_digest(code_manifest(Path(__file__), Path(__file__).resolve().parents[1], modules))


def checkpoint_path(checkpoint: Path, identity: str) -> Path:
    """The checkpoint file of one run: checkpoint's name with a digest of the run's identity
    (params, inputs, code) before its suffix, so another experiment's run of the same stage
    never overwrites it (`make clean-checkpoints` clears them all)."""
    tag = hashlib.sha256(identity.encode()).hexdigest()[:12]
    return checkpoint.with_name(f"{checkpoint.stem}.{tag}{checkpoint.suffix}")


def train_masked(
    ctx: Context,
    model: nn.Module,
    masks: Masks,
    *,
    start_epoch: int,
    rewind_epoch: int | None,
    checkpoint: Path | None,
    identity: str,
    methods: tuple[str, ...] = (),
    dead_bn: bool = True,
) -> TrainResult:
    """Train `model` under `masks` (and, with dead_bn, the BN masks of dead channels:
    structlth.masks.training_masks) for params.train's schedule from start_epoch, resumable from
    `checkpoint`, whose identity is `identity` (params and inputs) and the code that runs: this
    module's closure and the `methods` modules (code_digest)."""
    p = ctx.params
    identity += code_digest(*methods)
    model.to(ctx.device)
    tm = training_masks(model, masks, ctx.data.in_channels, dead_bn)
    progress = {"auto": None, "always": True, "never": False}[p.runtime.progress]
    if checkpoint is not None:
        checkpoint = checkpoint_path(checkpoint, identity)
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
    result = train(
        model,
        ctx.data,
        p.train,
        p.data.augment,
        p.data.batch_size // dist.world_size(),
        tm,
        epochs=p.train.epochs,
        start_epoch=start_epoch,
        eval_batch_size=p.data.eval_batch_size,
        rewind_epoch=rewind_epoch,
        checkpoint=checkpoint,
        identity=identity,
        progress=progress,
    )
    model.cpu()
    if checkpoint is not None and dist.is_main():
        checkpoint.unlink(missing_ok=True)
    return result


def round_metrics(ctx: Context, model: nn.Module, masks: Masks, result: TrainResult, dead_bn: bool = True, **extra) -> dict:
    """A round's metrics.json: accuracy at the best validation epoch, the mask's sparsity block
    (dead_bn: as it trained, structlth.masks.mask_stats), extra."""
    return {
        "test_acc": result.test_acc,
        "val_acc": result.val_acc,
        "best_epoch": result.best_epoch,
        **mask_stats(model, masks, ctx.input_shape, dead_bn),
        **extra,
    }


@contextmanager
def bn_l1_penalty(model: nn.Module, lam: float) -> Iterator[None]:
    """While open, every BN weight's gradient gains lam * sign(weight): the subgradient of
    lam * sum |gamma|, network slimming's sparsity regularisation (lam 0: nothing changes)."""
    bns = [m.weight for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    hooks = [w.register_hook(lambda g, w=w: g + lam * torch.sign(w.detach())) for w in bns] if lam else []
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def pretrain(ctx: Context, out_dir: Path, checkpoint: Path | None = None, bn_l1: float = 0.0) -> dict:
    """Dense training, with bn_l1_penalty(bn_l1); writes rewind.safetensors,
    weights.safetensors, metrics.json, curve.json."""
    p = ctx.params
    model = ctx.model()
    masks = ones_masks(model, p.prune.prunable)
    identity = params_hash(p.data, p.model, p.train) + (f"/bn_l1={bn_l1!r}" if bn_l1 else "")
    with bn_l1_penalty(model, bn_l1):
        result = train_masked(ctx, model, masks, start_epoch=0, rewind_epoch=p.train.rewind_epoch, checkpoint=checkpoint, identity=identity)
    metrics = round_metrics(ctx, model, masks, result, rewind_epoch=p.train.rewind_epoch, **({"bn_l1": bn_l1} if bn_l1 else {}))
    if dist.is_main():
        meta = {**ctx.model_meta(), "params_hash": identity}
        with staged_dir(out_dir) as d:
            save_tensors(d / "rewind.safetensors", result.rewind_state, {**meta, "kind": "rewind"})
            save_tensors(d / "weights.safetensors", state_of(model), {**meta, "kind": "weights"})
            save_tensors(d / "mask.safetensors", masks, {**meta, "kind": "mask"})
            save_predictions(ctx, d / "predictions.safetensors", result.test_pred, {**meta, "kind": "predictions"})
            write_json(d / "metrics.json", metrics)
            write_json(d / "curve.json", result.history)
    return metrics


def retrain(
    ctx: Context,
    masks: Masks,
    pretrain_dir: Path,
    checkpoint: Path | None,
    identity: str,
    start_from: str = "rewind",
    methods: tuple[str, ...] = (),
    dead_bn: bool = True,
) -> tuple[nn.Module, TrainResult]:
    """Set every parameter and buffer to `start_from` (rewind: pretrain's rewind point; weights:
    the trained dense net; original: the initialisation pretraining started from; random: a
    fresh initialisation under another seed), apply `masks`, retrain for the round's budget.
    identity and methods: the run's params and inputs, and the modules beyond this one whose
    code made its masks (the checkpoint's identity, train_masked); dead_bn: train_masked's."""
    p = ctx.params
    model = ctx.model()  # seeded by train.seed: the original initialisation
    check_masks(model, masks, "new mask")
    dist.check_same_on_all_ranks(masks, "pruning masks")
    if start_from == "random":
        torch.manual_seed(p.train.seed + RANDOM_INIT_SEED)
        m = p.model
        model = build_model(m.arch, ctx.data.num_classes, ctx.data.in_channels, m.width, m.small_input_stem)
    elif start_from != "original":
        model.load_state_dict(load_state(ctx, pretrain_dir / f"{start_from}.safetensors", model, {"kind": start_from})[0])
    start = p.train.rewind_epoch if p.train.retrain == "rest" else 0
    return model, train_masked(
        ctx, model, masks, start_epoch=start, rewind_epoch=None, checkpoint=checkpoint, identity=identity, methods=methods, dead_bn=dead_bn
    )


def chain_round(
    ctx: Context,
    chain: str,
    prune: Prune,
    section: BaseModel,
    prev_dir: Path,
    pretrain_dir: Path,
    out_dir: Path,
    checkpoint: Path | None,
    methods: tuple[str, ...] = (),
) -> dict:
    """One round of a pruning chain: `prune` round k-1's trained weights and masks, rewind,
    retrain, write the round. section: the params the pruning step reads; methods: the modules
    beyond this one that `prune` runs (train_masked)."""
    p = ctx.params
    model = ctx.model()
    state, masks = load_round(ctx, prev_dir, model)
    new = drop_untrainable(model, prune(state, masks), ctx.data.in_channels)
    identity = params_hash(p.data, p.model, p.train, p.prune, section)
    identity += file_digest(prev_dir / "mask.safetensors", prev_dir / "weights.safetensors")
    model, result = retrain(ctx, new, pretrain_dir, checkpoint, identity, methods=methods)
    metrics = round_metrics(ctx, model, new, result)
    save_round(ctx, out_dir, state_of(model), new, metrics, kind=chain, test_pred=result.test_pred)
    return metrics


def imp_round(ctx: Context, chain: str, prev_dir: Path, pretrain_dir: Path, out_dir: Path, checkpoint: Path | None = None) -> dict:
    """One round of the imp chain (global magnitude pruning at prune.rate) or the imp_channel
    chain (per-layer channel L1 at imp_channel.rate)."""
    p = ctx.params
    if chain == "imp":
        prune, section = (lambda state, masks: magnitude_prune(state, masks, p.prune.rate)), p.prune
    elif chain == "imp_channel":
        prune, section = (lambda state, masks: channel_prune(state, masks, p.imp_channel.rate)), p.imp_channel
    else:
        raise ValueError(f"unknown chain {chain!r}: imp or imp_channel (a group-aware chain is structlth.tickets.group_round)")
    return chain_round(ctx, chain, prune, section, prev_dir, pretrain_dir, out_dir, checkpoint)


DENSE_FILES = ("rewind.safetensors", "weights.safetensors", "metrics.json")  # what a baseline reads of its dense net


def baseline_dense(ctx: Context, name: str, pretrain_dir: Path, out_dir: Path, checkpoint: Path | None = None) -> dict:
    """The dense net Torch-Pruning baseline `name` prunes and fine-tunes (or rewinds): with
    sparsity_reg > 0 (network slimming) its own, trained from the same initialisation under
    bn_l1_penalty; else the shared one, whose DENSE_FILES it copies (the same bytes, stored once)."""
    spec = ctx.params.baselines[name]
    if spec.sparsity_reg:
        return pretrain(ctx, out_dir, checkpoint, bn_l1=spec.sparsity_reg)
    if dist.is_main():
        with staged_dir(out_dir) as d:
            for f in DENSE_FILES:
                shutil.copyfile(pretrain_dir / f, d / f)
    return json.loads((pretrain_dir / "metrics.json").read_text())
