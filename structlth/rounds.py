"""Round I/O: what every stage reads and writes, and the context training stages share.

Layout of one round or ticket directory: mask.safetensors (bool masks of prunable weights),
weights.safetensors (trained parameters and BN buffers), predictions.safetensors (the predicted
class of every test image at the reported epoch, and the labels: paired tests between any two
runs need nothing else), metrics.json (headline numbers only, so `dvc metrics show/diff` fit a
terminal), layers.json (per-layer densities, a DVC plot).

Bench, report and export read rounds through this module alone: none of them imports training
or a pruning method.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from structlth import distributed as dist
from structlth.artifacts import State, check_state, load_tensors, read_json, save_tensors, staged_dir, tensor_digest, write_json
from structlth.config import Params
from structlth.data import Dataset, load_dataset
from structlth.errors import ArtifactError
from structlth.masks import Masks, check_masks, layer_stats, mask_stats, ones_masks
from structlth.models import build_model


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


def setup(params: Params, data_dir: str | Path) -> Context:
    """The Context of a training stage: its device (threads, determinism on CPU, the process
    group under torchrun) and the prepared data in data_dir on it."""
    device = dist.local_device(params.runtime.device, params.runtime.device_locks)
    if device.type == "cpu":
        torch.set_num_threads(params.runtime.threads)
    torch.use_deterministic_algorithms(device.type == "cpu", warn_only=True)
    dist.init(device)
    return Context(params, load_dataset(data_dir, params.runtime.loader_workers, params.runtime.decode).to(device), device)


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


def read_metrics(path: Path, keys: tuple[str, ...]) -> dict:
    """A metrics.json that holds `keys` (each a number), or an ArtifactError naming what is missing."""
    metrics = read_json(path)
    missing = [k for k in keys if not isinstance(metrics, dict) or not isinstance(metrics.get(k), (int, float))]
    if missing:
        raise ArtifactError(f"{path}: no number for {', '.join(missing)} (rerun the stage that writes it: dvc repro -f -s <stage>)")
    return metrics


def seed_chain(ctx: Context, pretrain_dir: Path, out_dir: Path) -> dict:
    """Round 0 of a chain: the dense net (pretrain's final weights, all-ones mask), written as a round."""
    model = ctx.model()
    state, _ = load_state(ctx, pretrain_dir / "weights.safetensors", model, {"kind": "weights"})
    masks = ones_masks(model, ctx.params.prune.prunable)
    pre = read_metrics(pretrain_dir / "metrics.json", ("test_acc", "val_acc", "best_epoch"))
    preds, _ = load_tensors(pretrain_dir / "predictions.safetensors", expect_meta=test_set_meta(ctx))
    metrics = {**mask_stats(model, masks, ctx.input_shape), **{k: pre[k] for k in ("test_acc", "val_acc", "best_epoch")}}
    save_round(ctx, out_dir, state, masks, metrics, kind="dense", test_pred=preds["pred"])
    return metrics


def matched(params: Params, name: str, artifacts: Path) -> dict[str, dict]:
    """Baseline `name`'s targets: per ticket round, the ticket it matches, that ticket's FLOPs
    (from its metrics.json under `artifacts`) and the channel multiple the baseline keeps
    (Params.round_to): {'ticket', 'flops', 'round_to'}."""
    match, round_to = params.baselines[name].match, params.round_to(name)
    return {
        r: {"ticket": match, "flops": read_metrics(artifacts / match / r / "metrics.json", ("flops",))["flops"], "round_to": round_to}
        for r in params.prune.ticket_rounds
    }


def read_matched(path: Path, rnd: str) -> dict:
    """A baseline's target at round `rnd` ({'ticket', 'flops', 'round_to'}), from the file of `matched`."""
    targets = read_json(path)
    entry = targets.get(rnd) if isinstance(targets, dict) else None
    if not isinstance(entry, dict) or not all(isinstance(entry.get(k), int) for k in ("flops", "round_to")):
        raise ArtifactError(f"{path}: no matched FLOPs and round_to for {rnd} (rerun the stage that writes it: dvc repro -f -s <stage>)")
    return entry
