"""Masked training and evaluation: SGD, warmup + multistep/cosine, resume, optional DDP.

Pruned entries stay exactly zero: their gradients are zeroed before the optimizer step (so
momentum buffers and weight decay never see them) and the weights are re-masked after it.
The reported test accuracy is taken at the epoch with the best validation accuracy.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from structlth import distributed as dist
from structlth.artifacts import State, load_tensors, save_tensors
from structlth.config import Augment, TrainParams
from structlth.data import Dataset, Split, eval_batches, train_batches
from structlth.errors import ArtifactError
from structlth.masks import apply_masks


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one row per epoch
    best_epoch: int = 0
    val_acc: float = -1.0
    test_acc: float = 0.0
    test_pred: torch.Tensor | None = None  # int16 [N_test]: predicted class per test image at best_epoch
    rewind_state: State | None = None


def lr_at(hp: TrainParams, epoch: float, epochs: int) -> float:
    """Learning rate at a (fractional) epoch: linear warmup, then multistep or cosine."""
    if epoch < hp.warmup_epochs:
        return hp.lr * (epoch + 1e-3) / hp.warmup_epochs
    if hp.schedule == "cosine":
        t = (epoch - hp.warmup_epochs) / max(epochs - hp.warmup_epochs, 1e-9)
        return 0.5 * hp.lr * (1 + math.cos(math.pi * min(t, 1.0)))
    scale = epochs / hp.epochs  # retraining for fewer epochs compresses the milestones
    return hp.lr * hp.gamma ** sum(epoch >= m * scale for m in hp.milestones)


def state_of(model: nn.Module) -> State:
    """Every parameter and buffer (BN statistics included), detached CPU copies."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


@torch.no_grad()
def predict(model: nn.Module, split: Split, ds: Dataset, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted class and label of every image of `split`, in its order: two int64 [N] (CPU)."""
    was = model.training
    model.eval()
    preds, labels = [], []
    for x, y in eval_batches(split, ds, batch_size):
        with _autocast(x.device):
            preds.append(model(_fmt(x, model)).argmax(1).cpu())
        labels.append(y.cpu())
    model.train(was)
    if not preds:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    return torch.cat(preds), torch.cat(labels)


def evaluate(model: nn.Module, split: Split, ds: Dataset, batch_size: int) -> float:
    pred, label = predict(model, split, ds, batch_size)
    return float((pred == label).sum()) / max(len(label), 1)


def memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last (faster on oneDNN and cuDNN) unless the model has a conv that oneDNN
    mis-handles in that format: the backward of a 1x1 stride-2 conv with fewer than 8 input
    channels corrupts the heap on one CPU thread (torch 2.13; e.g. ResNet-20 at width 0.25)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels < 8:
            return torch.contiguous_format
    return torch.channels_last


def _fmt(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    return x.contiguous(memory_format=memory_format(model))


def _autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()


def _progress(enabled: bool, total: int, desc: str):
    if not enabled:
        return None
    from rich.progress import Progress

    prog = Progress(transient=True)
    prog.start()
    return prog, prog.add_task(desc, total=total)


def train(
    model: nn.Module,
    ds: Dataset,
    hp: TrainParams,
    aug: Augment,
    batch_size: int,
    masks: Mapping[str, torch.Tensor],
    *,
    epochs: int,
    start_epoch: int = 0,
    eval_batch_size: int = 1000,
    rewind_epoch: int | None = None,
    checkpoint: Path | None = None,
    identity: str = "",
    progress: bool | None = None,
    log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True),
) -> TrainResult:
    """Train `model` (on ds's device) over schedule epochs start_epoch..epochs.

    masks: param name -> bool mask (weights and BN of dead channels). rewind_epoch: keep a copy
    of the state after that many epochs (0: before training). checkpoint: a file rewritten
    after every epoch; a run that finds one with the same `identity` resumes from it.
    """
    device = next(model.parameters()).device
    params = dict(model.named_parameters())
    pairs = [(params[n], m.to(device, params[n].dtype)) for n, m in masks.items()]
    apply_masks(model, masks)
    fmt = memory_format(model)
    model.to(memory_format=fmt)
    decay = [p for p in params.values() if p.ndim > 1 or hp.decay_norm]
    no_decay = [p for p in params.values() if p.ndim <= 1 and not hp.decay_norm]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=hp.lr,
        momentum=hp.momentum,
        nesterov=hp.nesterov,
    )
    net = dist.wrap(model)
    rank, world = dist.rank(), dist.world_size()
    result = TrainResult()
    start = start_epoch
    if rewind_epoch == 0:
        result.rewind_state = state_of(model)
    if checkpoint is not None and checkpoint.is_file():
        start = _resume(checkpoint, identity, model, opt, result) or start_epoch
        if start > start_epoch:
            log(f"resuming from {checkpoint} after epoch {start}")
    if progress is None:
        progress = sys.stderr.isatty()
    steps = max(len(ds.train) // (batch_size * world), 1)
    began = time.perf_counter()
    for epoch in range(start, epochs):
        bar = _progress(progress and rank == 0, steps, f"epoch {epoch + 1}/{epochs}")
        net.train()
        loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
        batches = train_batches(ds.train, ds, batch_size, aug, hp.seed * 100_003 + epoch, rank=rank, world=world)
        for i, (x, y) in enumerate(batches):
            for group in opt.param_groups:
                group["lr"] = lr_at(hp, epoch + i / steps, epochs)
            with _autocast(device):
                out = net(x.contiguous(memory_format=fmt))
                loss = F.cross_entropy(out, y)
            opt.zero_grad(set_to_none=False)
            loss.backward()
            with torch.no_grad():
                for p, m in pairs:
                    p.grad.mul_(m)
                opt.step()
                for p, m in pairs:
                    p.mul_(m)
                loss_sum += loss.detach() * len(y)
                correct += (out.argmax(1) == y).sum()
            seen += len(y)
            if bar is not None:
                bar[0].advance(bar[1])
        if bar is not None:
            bar[0].stop()
        val_acc = evaluate(model, ds.val, ds, eval_batch_size)
        row = {
            "epoch": epoch + 1,
            "lr": lr_at(hp, epoch, epochs),
            "train_loss": float(loss_sum) / max(seen, 1),
            "train_acc": float(correct) / max(seen, 1),
            "val_acc": val_acc,
        }
        if val_acc > result.val_acc:  # ties keep the earlier epoch
            result.val_acc, result.best_epoch = val_acc, epoch + 1
            pred, label = predict(model, ds.test, ds, eval_batch_size)
            result.test_acc = float((pred == label).sum()) / max(len(label), 1)
            result.test_pred = pred.to(torch.int16)
        row["test_acc_at_best_val"] = result.test_acc
        result.history.append(row)
        if rewind_epoch is not None and epoch + 1 == rewind_epoch:
            result.rewind_state = state_of(model)
        if rank == 0:
            if checkpoint is not None and epoch + 1 < epochs:
                _save_checkpoint(checkpoint, identity, epoch + 1, model, opt, result)
            per_epoch = (time.perf_counter() - began) / (epoch + 1 - start)
            log(
                f"epoch {epoch + 1}/{epochs} loss {row['train_loss']:.4f} train {row['train_acc']:.4f}"
                f" val {val_acc:.4f} (best {result.val_acc:.4f} @ {result.best_epoch},"
                f" test {result.test_acc:.4f}) {per_epoch:.1f} s/epoch, {_duration(per_epoch * (epochs - epoch - 1))} left"
            )
    model.to(memory_format=torch.contiguous_format)
    return result


def _duration(seconds: float) -> str:
    """'1h02m', '3m05s' or '12s'."""
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _save_checkpoint(path: Path, identity: str, epoch: int, model: nn.Module, opt, result: TrainResult) -> None:
    tensors = {f"model.{k}": v for k, v in state_of(model).items()}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            buf = opt.state.get(p, {}).get("momentum_buffer")
            if buf is not None:
                tensors[f"momentum.{names[id(p)]}"] = buf
    for k, v in (result.rewind_state or {}).items():
        tensors[f"rewind.{k}"] = v
    if result.test_pred is not None:
        tensors["test_pred"] = result.test_pred
    meta = {
        "identity": identity,
        "epoch": epoch,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "val_acc": result.val_acc,
        "test_acc": result.test_acc,
    }
    save_tensors(path, tensors, meta)


def _resume(path: Path, identity: str, model: nn.Module, opt, result: TrainResult) -> int:
    try:
        tensors, meta = load_tensors(path)
    except ArtifactError:
        return 0  # unreadable: start afresh (it is overwritten)
    if meta.get("identity") != identity:
        return 0  # a checkpoint of other inputs: start afresh (it is overwritten)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    params = dict(model.named_parameters())
    for k, v in tensors.items():
        if k.startswith("momentum."):
            p = params[k[9:]]
            opt.state[p]["momentum_buffer"] = v.to(p.device).clone()
    rewind = {k[7:]: v for k, v in tensors.items() if k.startswith("rewind.")}
    result.rewind_state = rewind or result.rewind_state
    result.test_pred = tensors.get("test_pred")
    result.history = meta["history"]
    result.best_epoch, result.val_acc, result.test_acc = meta["best_epoch"], meta["val_acc"], meta["test_acc"]
    return int(meta["epoch"])
