"""Masked training throughput against a plain unmasked PyTorch loop (same model, data, steps)."""

from __future__ import annotations

import time

import torch
from torch.nn import functional as F

from structlth.config import Augment, TrainParams
from structlth.data import train_batches
from structlth.masks import ones_masks, training_masks
from structlth.models import build_model
from structlth.pruning import magnitude_prune
from structlth.train import train
from tests.helpers import synthetic_dataset


def _plain_loop(model, ds, hp, aug, batch) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    model.to(memory_format=torch.channels_last).train()
    for x, y in train_batches(ds.train, ds, batch, aug, 0):
        loss = F.cross_entropy(model(x.contiguous(memory_format=torch.channels_last)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def run(smoke: bool = False) -> dict:
    n, batch, repeats = (128, 32, 1) if smoke else (4096, 64, 3)
    ds = synthetic_dataset(n_train=n, n_val=8, n_test=8, classes=10)
    hp = TrainParams(epochs=1, lr=0.05, rewind_epoch=0, weight_decay=5e-4)
    aug = Augment(crop_padding=0, hflip=True)
    plain, masked = [], []
    for _ in range(repeats):  # alternate so background load hits both alike
        torch.manual_seed(0)
        m = build_model("resnet20", 10, 1, 0.5)
        t0 = time.perf_counter()
        _plain_loop(m, ds, hp, aug, batch)
        plain.append(n / (time.perf_counter() - t0))
        torch.manual_seed(0)
        m = build_model("resnet20", 10, 1, 0.5)
        masks = magnitude_prune(dict(m.named_parameters()), ones_masks(m), 0.5)
        t0 = time.perf_counter()
        train(m, ds, hp, aug, batch, training_masks(m, masks, 1), epochs=1, log=lambda s: None, progress=False)
        masked.append(n / (time.perf_counter() - t0))
    med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
    ratio = med(masked) / med(plain)
    return {
        "model": "resnet20 width 0.5, 1x28x28, batch 64, 2 threads",
        "plain_img_per_s": med(plain),
        "masked_img_per_s": med(masked),
        "ratio": ratio,
        "target": 0.95,
        "note": "masked includes its per-epoch validation pass over 8 images",
        "summary": f"masked/plain throughput = {ratio:.3f} (target >= 0.95)",
    }
