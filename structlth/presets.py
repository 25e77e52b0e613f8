"""The paper's settings as complete params files (configs/<name>.yaml).

Each preset is a whole params file made from the paper alone (Chen et al. 2022, Table 1 and the
text; ../shared/PAPER_RESULTS.md): nothing is read from the workspace's params.yaml, so a preset
is the same on every machine. `structlth presets configs` regenerates the files.

Settings (Table 1): SGD momentum 0.9, lr 0.1 x0.1 at the milestones, rewind to epoch 8 in every
setting, weight decay on every parameter (BN included, as the reference code does), IMP rate
0.2. CIFAR: 160 epochs, milestones 80/120, batch 128. Tiny-ImageNet and ImageNet: 95 epochs,
milestones 30/60; the batch size of these two is not in our transcription of Table 1: 256 here.
Weight decay: 1e-4 for WRN-32-2 / ResNet-18 / MobileNet-v1 on CIFAR-10 and ImageNet ResNet-50;
2e-4 for VGG-16 on CIFAR-10 and WRN-32-2 / ResNet-18 / MobileNet-v1 on CIFAR-100; 5e-4 for
VGG-16 on CIFAR-100 and Tiny-ImageNet ResNet-50.
Tickets: refill and refill+ keep ceil(K) channels (Table A3's 80.29% at IMP's 80%); regroup is
the paper's Alg. 3 (column hypergraph, density rule) at column granularity.
"""

from __future__ import annotations

from dataclasses import dataclass

CIFAR_SCHEDULE = {"epochs": 160, "milestones": [80, 120]}
IMAGENET_SCHEDULE = {"epochs": 95, "milestones": [30, 60]}
PLUS_SCHEDULE = {"epochs": 240, "milestones": [150, 180, 210]}  # the (+) settings of Tables A5/A6
REWIND_EPOCH = 8  # the paper rewinds to epoch 8 in every setting

DATASET_SHAPES = {  # dataset -> (classes, channels, image side)
    "fashion_mnist": (10, 1, 28),
    "cifar10": (10, 3, 32),
    "cifar100": (100, 3, 32),
    "tiny_imagenet": (200, 3, 64),
    "imagenet": (1000, 3, 224),
}

PAPER_REGROUP = {  # Alg. 3: hypergraph over columns, blocks by the density rule (t2, b2: no values in the paper)
    "kind": "regroup",
    "granularity": "column",
    "hypergraph": "column",
    "rows_per_part": 32,
    "imbalance": 0.1,
    "min_rows": 16,
    "column_rule": "density",
    "t1": 1.5,
    "t2": 0.5,
    "b2": 4,
    "seed": 0,
}
PAPER_TICKETS = {
    "refill": {"kind": "refill", "criterion": "magnitude", "refill_rate": 0.0, "count": "ceil", "score_batches": 1},
    "refill_plus": {"kind": "refill", "criterion": "magnitude", "refill_rate": 0.1, "count": "ceil", "score_batches": 1},
    "regroup": PAPER_REGROUP,
}


@dataclass(frozen=True)
class Preset:
    dataset: str
    arch: str
    rounds: int
    weight_decay: float
    batch_size: int = 128
    small_input_stem: bool = True
    suffix: str = ""
    long: bool = False  # the (+) schedule of Tables A5/A6 (PLUS_SCHEDULE)

    @property
    def name(self) -> str:
        return f"{self.dataset}_{self.arch}{self.suffix}"

    def params(self) -> dict:
        """The full params dict of this setting."""
        cifar = self.dataset.startswith("cifar")
        small = cifar or self.dataset == "fashion_mnist"
        side = DATASET_SHAPES[self.dataset][2]
        schedule = PLUS_SCHEDULE if self.long else CIFAR_SCHEDULE if small else IMAGENET_SCHEDULE
        return {
            "data": {
                "dataset": self.dataset,
                "root": "data/fashion-mnist" if self.dataset == "fashion_mnist" else f"data/{self.dataset}",
                "download": cifar,  # torchvision's checked download; ImageFolder roots are local
                "val_size": 5000 if small else 10000,
                "train_subset": None,
                "test_subset": None,
                "split_seed": 0,
                "image_size": None if small else side,
                "batch_size": self.batch_size,
                "eval_batch_size": 1000 if side <= 64 else 250,
                "loader": "auto",  # ImageFolder trees stream from disk; small datasets sit in memory
                "augment": (  # ImageNet: the reference's RandomResizedCrop; otherwise pad side/8 and crop
                    {"crop_padding": 0, "hflip": True, "random_resized_crop": True}
                    if self.dataset == "imagenet"
                    else {"crop_padding": side // 8, "hflip": True, "random_resized_crop": False}
                ),
            },
            "model": {"arch": self.arch, "width": 1.0, "small_input_stem": self.small_input_stem},
            "train": {
                "epochs": schedule["epochs"],
                "retrain": "full",
                "lr": 0.1,
                "schedule": "multistep",
                "milestones": schedule["milestones"],
                "gamma": 0.1,
                "warmup_epochs": 0,
                "momentum": 0.9,
                "nesterov": False,
                "weight_decay": self.weight_decay,
                "decay_norm": True,
                "rewind_epoch": REWIND_EPOCH,
                "seed": 0,
            },
            "prune": {
                "rate": 0.2,
                "rounds": {f"round{k}": {"prev": f"round{k - 1}"} for k in range(1, self.rounds + 1)},
                "ticket_rounds": [f"round{k}" for k in range(1, self.rounds + 1)],
                "prunable": {"stem": False, "classifier": False},
            },
            "imp_channel": {"rate": 0.2},
            "tickets": {k: dict(v) for k, v in PAPER_TICKETS.items()},
            "baselines": {"tp_l1": dict(TP_L1)},
            "group_chains": {},
            "replicates": {"seeds": []},
            "bench": {"batch_sizes": [1, 64], "repeats": 15, "blocks": 4, "warmup": 3, "threads": 2, "atol": 0.001},
            "report": {"tolerance": 0.01, "mask_layer": None},
            "runtime": {
                "device": "auto",
                "threads": 2,
                "nproc_per_node": 1,
                "progress": "auto",
                "loader_workers": 4 if small else 8,
                "decode": "auto",
            },
        }


# The field's structured pruning beside the paper's tickets (the paper's Fig. 1 compares with such
# pruners): Torch-Pruning's global filter-L1 at refill's FLOPs, fine-tuned for a ticket's budget.
TP_L1 = {"kind": "torch_pruning", "match": "refill", "importance": "l1", "start": "finetune", "round_to": 8, "score_batches": 1}

WEIGHT_DECAY = {  # (dataset, arch) -> Table 1's weight decay
    ("cifar10", "wrn32_2"): 1e-4,
    ("cifar10", "resnet18"): 1e-4,
    ("cifar10", "mobilenet_v1"): 1e-4,
    ("cifar10", "vgg16"): 2e-4,
    ("cifar100", "wrn32_2"): 2e-4,
    ("cifar100", "resnet18"): 2e-4,
    ("cifar100", "mobilenet_v1"): 2e-4,
    ("cifar100", "vgg16"): 5e-4,
    ("tiny_imagenet", "resnet50"): 5e-4,
    ("imagenet", "resnet50"): 1e-4,
}
PAPER_MODELS = ("wrn32_2", "resnet18", "mobilenet_v1", "vgg16")
PRESETS = {
    p.name: p
    for p in [
        *(Preset(ds, arch, rounds=10, weight_decay=WEIGHT_DECAY[ds, arch]) for ds in ("cifar10", "cifar100") for arch in PAPER_MODELS),
        Preset("cifar10", "resnet20", rounds=10, weight_decay=1e-4),  # the classic lottery-ticket setting (not in Table 1)
        Preset("fashion_mnist", "resnet20", rounds=10, weight_decay=1e-4),  # the embedded default at full size (not in Table 1)
        Preset("tiny_imagenet", "resnet50", rounds=8, weight_decay=5e-4, batch_size=256, small_input_stem=False),
        Preset(
            "tiny_imagenet", "resnet50", rounds=8, weight_decay=5e-4, batch_size=256, small_input_stem=True, suffix="_plus"
        ),  # "RN-50(+)": 3x3 stem
        Preset("imagenet", "resnet50", rounds=5, weight_decay=1e-4, batch_size=256, small_input_stem=False),
        # the (+) settings Tables A5 (VGG-16) and A6 (WRN-32-2) report on CIFAR-100: 240 epochs
        *(
            Preset("cifar100", arch, rounds=10, weight_decay=WEIGHT_DECAY["cifar100", arch], suffix="_plus", long=True)
            for arch in ("vgg16", "wrn32_2")
        ),
    ]
}
