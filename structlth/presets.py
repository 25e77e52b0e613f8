"""The paper's settings as complete params files (configs/<name>.yaml).

A preset replaces the data, model, train and prune sections of a base params file (normally the
shipped params.yaml, so tickets, bench and report settings stay shared) with the paper's
schedule for one (dataset, model) pair. `structlth presets configs` regenerates the files.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

# SGD momentum 0.9; lr 0.1 x0.1 at the milestones; rewind point at about 5% of training.
CIFAR_SCHEDULE = {"epochs": 160, "milestones": [80, 120], "rewind_epoch": 8}
IMAGENET_SCHEDULE = {"epochs": 95, "milestones": [30, 60], "rewind_epoch": 5}

DATASET_SHAPES = {  # dataset -> (classes, channels, image side)
    "fashion_mnist": (10, 1, 28),
    "cifar10": (10, 3, 32),
    "cifar100": (100, 3, 32),
    "tiny_imagenet": (200, 3, 64),
    "imagenet": (1000, 3, 224),
}


@dataclass(frozen=True)
class Preset:
    dataset: str
    arch: str
    rounds: int
    weight_decay: float = 1e-4
    batch_size: int = 128
    small_input_stem: bool = True

    @property
    def name(self) -> str:
        return f"{self.dataset}_{self.arch}"

    def params(self, base: dict) -> dict:
        """A full params dict: `base` with this preset's data/model/train/prune sections."""
        raw = copy.deepcopy(base)
        cifar = self.dataset.startswith("cifar")
        small = cifar or self.dataset == "fashion_mnist"
        side = DATASET_SHAPES[self.dataset][2]
        schedule = CIFAR_SCHEDULE if small else IMAGENET_SCHEDULE
        raw["data"] = {
            "dataset": self.dataset,
            "root": "data/raw" if self.dataset == "fashion_mnist" else f"data/{self.dataset}",
            "download": cifar,  # torchvision's checked download; ImageFolder roots are local
            "val_size": 5000 if small else 10000,
            "train_subset": None,
            "test_subset": None,
            "split_seed": 0,
            "image_size": None if small else side,
            "batch_size": self.batch_size,
            "eval_batch_size": 1000 if side <= 64 else 250,
            "augment": {"crop_padding": side // 8, "hflip": True},
        }
        raw["model"] = {"arch": self.arch, "width": 1.0, "small_input_stem": self.small_input_stem}
        raw["train"] = {
            "epochs": schedule["epochs"], "retrain": "full", "lr": 0.1, "schedule": "multistep",
            "milestones": schedule["milestones"], "gamma": 0.1, "warmup_epochs": 0, "momentum": 0.9,
            "nesterov": False, "weight_decay": self.weight_decay, "rewind_epoch": schedule["rewind_epoch"],
            "seed": 0,
        }
        rounds = {f"round{k}": {"prev": f"round{k - 1}"} for k in range(1, self.rounds + 1)}
        raw["prune"] = {**raw["prune"], "rate": 0.2, "rounds": rounds}
        raw["runtime"] = {**raw["runtime"], "device": "auto"}
        return raw


PAPER_MODELS = ("wrn32_2", "resnet18", "mobilenet_v1", "vgg16")
PRESETS = {
    p.name: p
    for p in [
        *(Preset(ds, arch, rounds=10) for ds in ("cifar10", "cifar100") for arch in PAPER_MODELS),
        Preset("cifar10", "resnet20", rounds=10),  # the classic lottery-ticket setting
        Preset("fashion_mnist", "resnet20", rounds=10),  # the embedded default at full size
        Preset("tiny_imagenet", "resnet50", rounds=8, batch_size=256),
        Preset("imagenet", "resnet50", rounds=5, batch_size=256, small_input_stem=False),
    ]
}
