"""What each pipeline stage does, as library functions the thin stage scripts call.

Layout of one round or ticket directory: mask.safetensors (bool masks of prunable weights),
weights.safetensors (trained parameters and BN buffers), predictions.safetensors (the predicted
class of every test image at the reported epoch, and the labels: paired tests between any two
runs need nothing else), metrics.json (headline numbers only, so `dvc metrics show/diff` fit a
terminal), layers.json (per-layer densities, a DVC plot).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import torch
from torch import nn

from structlth import distributed as dist
from structlth.artifacts import check_state, load_tensors, read_json, save_tensors, staged_dir, tensor_digest, write_json
from structlth.codedeps import code_manifest, manifest_digest
from structlth.config import IMAGE_FOLDERS, Params, RefillParams, RegroupParams, TicketOrigin, TorchPruningParams, params_hash
from structlth.data import Dataset, eval_batches, has_raw, load_dataset, prepare_data, raw_layout
from structlth.errors import ArtifactError, ParamsError
from structlth.masks import (
    Masks,
    check_masks,
    density,
    drop_untrainable,
    effective_flops,
    layer_stats,
    mask_stats,
    ones_masks,
    training_masks,
)
from structlth.models import build_model
from structlth.pruning import channel_prune, magnitude_prune, regroup_layers
from structlth.pruning.baseline import match_flops
from structlth.pruning.refill import activation_scores, refill_masks, weight_scores
from structlth.pruning.sources import keep_top, omp_masks, random_masks, snip_scores, synflow_masks
from structlth.train import State, TrainResult, state_of, train

RANDOM_INIT_SEED = 10_007  # a re-initialised ticket's seed is train.seed + this: no training seed's init


@dataclass(frozen=True)
class Context:
    """What every training stage needs: validated params, the data on its device, the device."""

    params: Params
    data: Dataset
    device: torch.device

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (1, *self.data.train.image_shape)

    def model(self) -> nn.Module:
        """A fresh model of params.model for this dataset, deterministically initialised."""
        torch.manual_seed(self.params.train.seed)
        m = self.params.model
        return build_model(m.arch, self.data.num_classes, self.data.in_channels, m.width, m.small_input_stem)

    def model_meta(self) -> dict:
        return {
            "arch": self.params.model.arch,
            "width": self.params.model.width,
            "in_channels": self.data.in_channels,
            "num_classes": self.data.num_classes,
        }


def check_runnable(params: Params) -> None:
    """What validation of params.yaml alone cannot know: the machine, the data folder, layer
    names. The pipeline's first stage runs it, so a bad edit stops before any stage deletes
    its outputs."""
    dist.local_device(params.runtime.device)
    root = Path(params.data.root)
    if root.exists() and not root.is_dir():
        raise ParamsError(f"data.root: {root} is a file, not a folder")
    downloadable = params.data.download and params.data.dataset not in IMAGE_FOLDERS
    if not downloadable and not has_raw(params.data):
        raise ParamsError(
            f"data.root: no {params.data.dataset} under {str(root)!r}. It must hold {raw_layout(params.data)}"
            + ("" if params.data.dataset in IMAGE_FOLDERS else "; or set data.download: true where there is network")
        )
    layer = params.report.mask_layer
    if layer is not None:
        m = params.model
        names = ones_masks(build_model(m.arch, 10, 3, m.width, m.small_input_stem), params.prune.prunable)
        if layer not in names:
            raise ParamsError(f"report.mask_layer: {layer!r} is not a prunable layer of {m.arch}; one of {', '.join(list(names)[:4])}, ...")


def setup(params: Params, data_dir: str | Path) -> Context:
    device = dist.local_device(params.runtime.device)
    if device.type == "cpu":
        torch.set_num_threads(params.runtime.threads)
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    dist.init(device)
    return Context(params, load_dataset(data_dir, params.runtime.loader_workers, params.runtime.decode).to(device), device)


def prepare(params: Params, out_dir: str | Path) -> dict:
    """The prepared dataset in out_dir; returns its summary (prepare's DVC metrics)."""
    meta = {"dataset": params.data.dataset, "params_hash": params_hash(params.data)}
    return prepare_data(params.data, out_dir, meta, params.runtime.loader_workers)


# ---------------------------------------------------------------- round artifacts


def round_id(round_dir: Path) -> str:
    """A round's identity from its folder: '<method>/<round>', e.g. 'imp/round2'."""
    return f"{round_dir.parent.name}/{round_dir.name}"


def test_set_meta(ctx: Context) -> dict:
    """What identifies the test set a predictions file belongs to (two files pair only when equal)."""
    d = ctx.params.data
    labels = ctx.data.test.labels.cpu()
    return {
        "dataset": d.dataset,
        "test_subset": d.test_subset,
        "test_images": len(labels),
        "labels_digest": tensor_digest({"target": labels}),
    }


def save_predictions(ctx: Context, path: Path, pred: torch.Tensor | None, meta: dict) -> None:
    """predictions.safetensors: pred int16 [N_test] (predicted class per test image, in test-set
    order) and target int16 [N_test] (the labels)."""
    if pred is None:
        raise ArtifactError(f"{path}: training kept no test predictions (no epoch was evaluated)")
    target = ctx.data.test.labels.cpu().to(torch.int16)
    if pred.shape != target.shape:
        raise ArtifactError(f"{path}: {pred.numel()} predictions for {target.numel()} test images")
    save_tensors(path, {"pred": pred.to(torch.int16), "target": target}, {**meta, **test_set_meta(ctx)})


def load_predictions(path: Path) -> tuple[torch.Tensor, dict]:
    """Per-image results of a round: bool [N_test] (prediction == label) and the file's metadata."""
    t, meta = load_tensors(path)
    if set(t) != {"pred", "target"} or t["pred"].shape != t["target"].shape or t["pred"].ndim != 1:
        raise ArtifactError(f"{path}: not a predictions file (pred and target, one entry per test image)")
    return t["pred"] == t["target"], meta


def save_round(ctx: Context, out_dir: Path, state: State, masks: Masks, metrics: dict, kind: str, test_pred: torch.Tensor | None) -> None:
    """mask.safetensors and weights.safetensors carry the round's id; the weights also carry the
    digest of their mask, so a mask that is swapped, copied from another round or edited is
    refused on load (`load_round`)."""
    if not dist.is_main():
        return
    meta = {**ctx.model_meta(), "kind": kind, "round": round_id(out_dir)}
    with staged_dir(out_dir) as d:
        save_tensors(d / "mask.safetensors", masks, meta)
        save_tensors(d / "weights.safetensors", state, {**meta, "mask_digest": tensor_digest(masks)})
        save_predictions(ctx, d / "predictions.safetensors", test_pred, meta)
        write_json(d / "metrics.json", metrics)
        write_json(d / "layers.json", [{"layer": n, **s} for n, s in layer_stats(masks).items()])


def load_state(ctx: Context, path: Path, model: nn.Module, expect_meta: dict | None = None) -> tuple[State, dict]:
    """A state dict that fits `model`, checked finite float32, and its metadata."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    state, meta = load_tensors(path, expect_meta={**ctx.model_meta(), **(expect_meta or {})}, expect=shapes)
    check_state(path, state)
    return state, meta


def load_round(ctx: Context, round_dir: Path, model: nn.Module, *, expect_round: bool = True) -> tuple[State, Masks]:
    """Trained state and masks of a round; checks they fit `model`, belong to this round (the
    folder's '<method>/<round>', unless expect_round is False: an exported or moved ticket) and
    to each other (the mask digest the weights recorded)."""
    which = {"round": round_id(round_dir)} if expect_round else {}
    state, meta = load_state(ctx, round_dir / "weights.safetensors", model, which)
    masks, mask_meta = load_tensors(round_dir / "mask.safetensors", expect_meta={**ctx.model_meta(), **which})
    check_masks(model, masks, str(round_dir / "mask.safetensors"))
    for name, m in masks.items():
        if m.dtype != torch.bool:
            raise ArtifactError(f"{round_dir / 'mask.safetensors'}: mask {name} is {m.dtype}, masks are bool")
    if mask_meta.get("round") != meta.get("round"):
        raise ArtifactError(f"{round_dir}: mask.safetensors is from {mask_meta.get('round')}, weights.safetensors from {meta.get('round')}")
    if tensor_digest(masks) != meta.get("mask_digest"):
        raise ArtifactError(
            f"{round_dir / 'mask.safetensors'}: its content differs from the mask weights.safetensors was trained"
            " with (edited or replaced); rerun the round (dvc repro -f -s <stage>) or restore it (dvc checkout)"
        )
    for name, m in masks.items():
        if bool((state[name][~m.bool()] != 0).any()):
            raise ArtifactError(
                f"{round_dir}: weights.safetensors has non-zero {name} entries that mask.safetensors"
                " prunes: mask and weights come from different rounds"
            )
    return state, masks


def load_ticket(ctx: Context, round_dir: Path, *, expect_round: bool = True) -> tuple[nn.Module, Masks]:
    """The model of params.model with a round's (or a moved ticket's) trained weights loaded, and
    its masks, checked as `load_round` checks them."""
    model = ctx.model()
    state, masks = load_round(ctx, round_dir, model, expect_round=expect_round)
    model.load_state_dict(state)
    return model, masks


def file_digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]


def code_digest() -> str:
    """Digest of the library files training runs (this module's import closure, see
    structlth.codedeps): part of every checkpoint's identity, so a run never resumes from a
    checkpoint that other code wrote."""
    return manifest_digest(code_manifest(Path(__file__), Path(__file__).resolve().parents[1]))


def checkpoint_path(checkpoint: Path, identity: str) -> Path:
    """The checkpoint file of one run: checkpoint's name with a digest of the run's identity
    (params, inputs, code) before its suffix, so another experiment's run of the same stage
    never overwrites it (`make clean-checkpoints` clears them all)."""
    tag = hashlib.sha256(identity.encode()).hexdigest()[:12]
    return checkpoint.with_name(f"{checkpoint.stem}.{tag}{checkpoint.suffix}")


def read_metrics(path: Path, keys: tuple[str, ...]) -> dict:
    """A metrics.json that holds `keys` (each a number), or an ArtifactError naming what is missing."""
    metrics = read_json(path)
    missing = [k for k in keys if not isinstance(metrics, dict) or not isinstance(metrics.get(k), (int, float))]
    if missing:
        raise ArtifactError(f"{path}: no number for {', '.join(missing)} (rerun the stage that writes it: dvc repro -f -s <stage>)")
    return metrics


# ---------------------------------------------------------------- training stages


def _train(
    ctx: Context, model: nn.Module, masks: Masks, *, start_epoch: int, rewind_epoch: int | None, checkpoint: Path | None, identity: str
) -> TrainResult:
    p = ctx.params
    model.to(ctx.device)
    tm = training_masks(model, masks, ctx.data.in_channels)
    progress = {"auto": None, "always": True, "never": False}[p.runtime.progress]
    identity += code_digest()
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


def _metrics(ctx: Context, model: nn.Module, masks: Masks, result: TrainResult, **extra) -> dict:
    return {
        "test_acc": result.test_acc,
        "val_acc": result.val_acc,
        "best_epoch": result.best_epoch,
        **mask_stats(model, masks, ctx.input_shape),
        **extra,
    }


def pretrain(ctx: Context, out_dir: Path, checkpoint: Path | None = None) -> dict:
    """Dense training; writes rewind.safetensors, weights.safetensors, metrics.json, curve.json."""
    p = ctx.params
    model = ctx.model()
    masks = ones_masks(model, p.prune.prunable)
    identity = params_hash(p.data, p.model, p.train)
    result = _train(ctx, model, masks, start_epoch=0, rewind_epoch=p.train.rewind_epoch, checkpoint=checkpoint, identity=identity)
    metrics = _metrics(ctx, model, masks, result, rewind_epoch=p.train.rewind_epoch)
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


def _retrain(
    ctx: Context, masks: Masks, pretrain_dir: Path, checkpoint: Path | None, identity: str, start_from: str = "rewind"
) -> tuple[nn.Module, TrainResult]:
    """Set every parameter and buffer to `start_from` (rewind: pretrain's rewind point; weights:
    the trained dense net; original: the initialisation pretraining started from; random: a
    fresh initialisation under another seed), apply `masks`, retrain for the round's budget."""
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
    return model, _train(ctx, model, masks, start_epoch=start, rewind_epoch=None, checkpoint=checkpoint, identity=identity)


def imp_round(ctx: Context, chain: str, prev_dir: Path, pretrain_dir: Path, out_dir: Path, checkpoint: Path | None = None) -> dict:
    """One round of a pruning chain: prune round k-1's trained weights (a group-aware chain
    then post-processes the mask as its ticket), rewind, retrain."""
    p = ctx.params
    model = ctx.model()
    state, masks = load_round(ctx, prev_dir, model)
    if chain == "imp":
        new = magnitude_prune(state, masks, p.prune.rate)
        section = p.prune
    elif chain == "imp_channel":
        new = channel_prune(state, masks, p.imp_channel.rate)
        section = p.imp_channel
    elif chain in p.group_chains:  # Alg. 4: the pruned mask is post-processed before rewinding
        spec = p.tickets[p.group_chains[chain].ticket]
        new, _ = structured_masks(ctx, spec, state, magnitude_prune(state, masks, p.prune.rate), pretrain_dir)
        section = spec
    else:
        raise ValueError(f"unknown chain {chain!r}")
    new = drop_untrainable(model, new, ctx.data.in_channels)
    identity = params_hash(p.data, p.model, p.train, p.prune, section) + file_digest(
        prev_dir / "mask.safetensors", prev_dir / "weights.safetensors"
    )
    model, result = _retrain(ctx, new, pretrain_dir, checkpoint, identity)
    metrics = _metrics(ctx, model, new, result)
    save_round(ctx, out_dir, state_of(model), new, metrics, kind=chain, test_pred=result.test_pred)
    return metrics


def ticket_masks(ctx: Context, spec: RefillParams | RegroupParams, state: State, masks: Masks) -> Masks:
    """Post-process one IMP round's masks into a structured ticket's masks."""
    if isinstance(spec, RegroupParams):
        return regroup_layers(masks, **spec.model_dump(exclude={"kind", *TicketOrigin.model_fields}))
    if spec.criterion in ("magnitude", "remain"):
        scores = weight_scores(spec.criterion, state, masks)
    else:
        model = ctx.model()
        model.load_state_dict(state)
        model.to(ctx.device)
        batches = list(
            islice(eval_batches(ctx.data.train, ctx.data, ctx.params.data.batch_size), spec.score_batches)
        )  # not a streamed epoch
        scores = activation_scores(spec.criterion, model, masks, batches)
    return refill_masks(masks, scores, spec.refill_rate, spec.count, spec.channel_align)


def source_masks(ctx: Context, spec: TicketOrigin, density: float, pretrain_dir: Path) -> tuple[State, Masks]:
    """A ticket's unstructured mask from spec.source at `density` (the IMP round's), and the
    weights refill scores channels by: the trained dense net's (structlth.pruning.sources)."""
    p = ctx.params
    model = ctx.model()  # the initialisation (train.seed): what snip and synflow score
    dense, _ = load_state(ctx, pretrain_dir / "weights.safetensors", model, {"kind": "weights"})
    names = list(ones_masks(model, p.prune.prunable))
    if spec.source == "omp":
        masks = omp_masks({n: dense[n] for n in names}, density)
    elif spec.source == "random":
        masks = random_masks({n: dense[n].shape for n in names}, density, p.train.seed)
    elif spec.source == "snip":
        batches = list(islice(eval_batches(ctx.data.train, ctx.data, p.data.batch_size), spec.source_batches))
        masks = keep_top(snip_scores(model.to(ctx.device), names, batches), density)
    else:
        masks = synflow_masks(model, names, density, ctx.input_shape, spec.source_iterations)
    return dense, drop_untrainable(ctx.model(), masks, ctx.data.in_channels)


def structured_masks(
    ctx: Context, spec: RefillParams | RegroupParams, state: State, masks: Masks, pretrain_dir: Path
) -> tuple[Masks, dict]:
    """A refill or regroup ticket's masks from one IMP round (state, masks): its source's mask
    at the round's density (spec.source; the round's own for imp), post-processed, untrainable
    weights dropped; and what the metrics record of the source."""
    extra = {}
    if spec.source != "imp":
        state, masks = source_masks(ctx, spec, density(masks), pretrain_dir)
        extra = {"source": spec.source, "source_density": density(masks)}
    return drop_untrainable(ctx.model(), ticket_masks(ctx, spec, state, masks), ctx.data.in_channels), extra


def baseline_masks(ctx: Context, spec: TorchPruningParams, state: State, masks: Masks, pretrain_dir: Path) -> tuple[Masks, dict]:
    """Torch-Pruning's channel masks of the trained dense net at the FLOPs of ticket
    `spec.match` made from this IMP round (state, masks); and what the metrics record of it."""
    model = ctx.model()
    flops_of = lambda m: effective_flops(model, m, ctx.input_shape)[1]  # noqa: E731
    target = flops_of(structured_masks(ctx, ctx.params.tickets[spec.match], state, masks, pretrain_dir)[0])
    model.load_state_dict(load_state(ctx, pretrain_dir / "weights.safetensors", model, {"kind": "weights"})[0])
    example = torch.zeros(ctx.input_shape)
    gradients = None
    if spec.importance == "taylor":
        batches = list(islice(eval_batches(ctx.data.train, ctx.data, ctx.params.data.batch_size), spec.score_batches))

        def gradients(net: nn.Module) -> None:
            net.zero_grad()
            for x, y in batches:
                nn.functional.cross_entropy(net(x.cpu()), y.cpu()).backward()

    ones = ones_masks(model, ctx.params.prune.prunable)
    new, ratio = match_flops(
        model,
        ones,
        example,
        spec.importance,
        spec.round_to,
        target,
        lambda m: flops_of(drop_untrainable(model, m, ctx.data.in_channels)),
        gradients,
    )
    return drop_untrainable(model, new, ctx.data.in_channels), {
        "matched": spec.match,
        "matched_flops": target,
        "pruning_ratio": ratio,
        "start": spec.start,
    }


def make_ticket(ctx: Context, name: str, imp_dir: Path, pretrain_dir: Path, out_dir: Path, checkpoint: Path | None = None) -> dict:
    """A structured ticket from IMP round k: post-process its mask (or, for a torch_pruning
    ticket, prune the dense net to the FLOPs of the matched ticket), rewind (or start from the
    weights the ticket's `init` / `start` names), retrain. metrics.json records that start."""
    p = ctx.params
    spec = p.ticket_spec(name)
    model = ctx.model()
    source = read_metrics(imp_dir / "metrics.json", ("sparsity", "test_acc"))  # every input read before training
    state, masks = load_round(ctx, imp_dir, model)
    extra, start_from = {}, getattr(spec, "init", "rewind")
    if isinstance(spec, TorchPruningParams):
        new, extra = baseline_masks(ctx, spec, state, masks, pretrain_dir)
        start_from = "weights" if spec.start == "finetune" else "rewind"
    else:
        new, extra = structured_masks(ctx, spec, state, masks, pretrain_dir)
    if getattr(spec, "channel_align", 1) > 1:  # what alignment gave back: the sparsity the ticket had before it
        unaligned = structured_masks(ctx, spec.model_copy(update={"channel_align": 1}), state, masks, pretrain_dir)[0]
        extra["unaligned_sparsity"] = 1 - density(unaligned)
    identity = params_hash(p.data, p.model, p.train, spec) + file_digest(imp_dir / "mask.safetensors", imp_dir / "weights.safetensors")
    if isinstance(spec, TorchPruningParams):
        identity += params_hash(p.tickets[spec.match])
    model, result = _retrain(ctx, new, pretrain_dir, checkpoint, identity, start_from)
    metrics = _metrics(
        ctx,
        model,
        new,
        result,
        source_sparsity=source["sparsity"],
        source_test_acc=source["test_acc"],
        kind=spec.kind,
        **{"start": start_from, **extra},  # a baseline records its own start (finetune | rewind)
    )
    save_round(ctx, out_dir, state_of(model), new, metrics, kind=name, test_pred=result.test_pred)
    return metrics


def seed_chain(ctx: Context, pretrain_dir: Path, out_dir: Path) -> dict:
    """Round 0 of a chain: the dense net (pretrain's final weights, all-ones mask)."""
    model = ctx.model()
    state, _ = load_state(ctx, pretrain_dir / "weights.safetensors", model, {"kind": "weights"})
    masks = ones_masks(model, ctx.params.prune.prunable)
    pre = read_metrics(pretrain_dir / "metrics.json", ("test_acc", "val_acc", "best_epoch"))
    preds, _ = load_tensors(pretrain_dir / "predictions.safetensors", expect_meta=test_set_meta(ctx))
    metrics = {**mask_stats(model, masks, ctx.input_shape), **{k: pre[k] for k in ("test_acc", "val_acc", "best_epoch")}}
    save_round(ctx, out_dir, state, masks, metrics, kind="dense", test_pred=preds["pred"])
    return metrics
