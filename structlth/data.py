"""Datasets as uint8 tensors: prepare once into safetensors, then batch and augment on device.

A split is images uint8 [N, C, H, W] + labels int64 [N]. Normalisation and augmentation
(random crop after zero padding, horizontal flip) run batched on the training device.
"""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from structlth.artifacts import load_tensors, save_tensors, staged_dir
from structlth.config import Augment, DataParams
from structlth.errors import ArtifactError, DataError

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))


@dataclass(frozen=True)
class Dataset:
    train: Split
    val: Split
    test: Split
    classes: list[str]
    mean: list[float]  # per channel, in [0, 1] units, from the train split
    std: list[float]

    @property
    def in_channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(
            self.train.to(device), self.val.to(device), self.test.to(device),
            self.classes, self.mean, self.std,
        )


# ---------------------------------------------------------------- raw sources -> uint8 tensors


def _unpack_debian_fashion_mnist(root: Path) -> bool:
    """Decompress Debian's idx .gz files where torchvision's FashionMNIST reads them."""
    raw = root / "FashionMNIST" / "raw"
    if all((raw / f).is_file() for f in FASHION_MNIST_FILES):
        return True
    if not all((DEBIAN_FASHION_MNIST / f"{f}.gz").is_file() for f in FASHION_MNIST_FILES):
        return False
    raw.mkdir(parents=True, exist_ok=True)
    for f in FASHION_MNIST_FILES:
        with gzip.open(DEBIAN_FASHION_MNIST / f"{f}.gz", "rb") as src, open(raw / f, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return True


def _fashion_mnist(p: DataParams) -> tuple[Split, Split, list[str]]:
    from torchvision.datasets import FashionMNIST

    root = Path(p.root)
    local = _unpack_debian_fashion_mnist(root)
    try:
        sets = [FashionMNIST(str(root), train=t, download=p.download and not local) for t in (True, False)]
    except Exception as err:  # torchvision raises RuntimeError/URLError/OSError variously
        raise DataError(
            "fashion_mnist: no local copy"
            + (f" and the download failed ({type(err).__name__}: {err})" if p.download else " and data.download is false")
            + ".\n  Either install the Debian package "
            "(apt-get install dataset-fashion-mnist, which puts the files in "
            f"{DEBIAN_FASHION_MNIST}) or allow network access for torchvision's checked "
            f"download into data.root={p.root!r}."
        ) from None
    train, test = (Split(s.data.unsqueeze(1).contiguous(), s.targets.long()) for s in sets)
    return train, test, list(sets[0].classes)


def _cifar(p: DataParams) -> tuple[Split, Split, list[str]]:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if p.dataset == "cifar10" else CIFAR100
    try:
        sets = [cls(p.root, train=t, download=p.download) for t in (True, False)]
    except (RuntimeError, OSError) as err:  # not found; or the download failed (URLError is an OSError)
        how = f"the download failed ({type(err).__name__}: {err})" if p.download else f"{err}; set data.download: true to fetch it with torchvision's checksum"
        raise DataError(f"{p.dataset}: not found under data.root={p.root!r}: {how}, or point data.root at a local copy") from None

    def split(s) -> Split:
        images = torch.from_numpy(np.ascontiguousarray(s.data)).permute(0, 3, 1, 2).contiguous()
        return Split(images, torch.tensor(s.targets, dtype=torch.long))

    return split(sets[0]), split(sets[1]), list(sets[0].classes)


def _image_folder(p: DataParams) -> tuple[Split, Split, list[str]]:
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    root = Path(p.root)
    size = p.image_size or (64 if p.dataset == "tiny_imagenet" else 224)
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise DataError(
                f"{p.dataset}: data.root={p.root!r} needs {sub}/ as an ImageFolder"
                " (one folder per class)"
            )
    tf = transforms.Compose([transforms.Resize(size), transforms.CenterCrop(size), transforms.PILToTensor()])

    def split(sub: str) -> tuple[Split, list[str]]:
        ds = ImageFolder(str(root / sub), transform=tf)
        images = torch.stack([ds[i][0] for i in range(len(ds))])
        return Split(images, torch.tensor(ds.targets, dtype=torch.long)), ds.classes

    (train, classes), (test, test_classes) = split("train"), split("val")
    if classes != test_classes:
        raise DataError(f"{p.dataset}: train/ and val/ under {p.root!r} have different classes")
    return train, test, classes


def _take(split: Split, idx: torch.Tensor) -> Split:
    return Split(split.images[idx].contiguous(), split.labels[idx].contiguous())


def build_dataset(p: DataParams) -> Dataset:
    """Read the raw dataset and carve train / val / test deterministically (data.split_seed)."""
    reader = {"fashion_mnist": _fashion_mnist, "cifar10": _cifar, "cifar100": _cifar}
    full_train, full_test, classes = reader.get(p.dataset, _image_folder)(p)
    n = len(full_train)
    if p.val_size >= n:
        raise DataError(f"data.val_size={p.val_size} must be smaller than the {n} train images")
    if p.train_subset is not None and p.train_subset > n - p.val_size:
        raise DataError(
            f"data.train_subset={p.train_subset} is larger than the dataset: {p.dataset} has"
            f" {n} train images, {n - p.val_size} after data.val_size={p.val_size}"
        )
    if p.test_subset is not None and p.test_subset > len(full_test):
        raise DataError(
            f"data.test_subset={p.test_subset} is larger than the dataset: {p.dataset} has"
            f" {len(full_test)} test images"
        )
    g = torch.Generator().manual_seed(p.split_seed)
    perm = torch.randperm(n, generator=g)
    val_idx, train_idx = perm[: p.val_size], perm[p.val_size :]
    if p.train_subset is not None:
        train_idx = train_idx[: p.train_subset]
    test_idx = torch.randperm(len(full_test), generator=g)[: p.test_subset or len(full_test)]
    train = _take(full_train, train_idx.sort().values)
    x = train.images.float() / 255
    mean = x.mean(dim=(0, 2, 3)).tolist()
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    return Dataset(
        train, _take(full_train, val_idx.sort().values), _take(full_test, test_idx.sort().values),
        classes, [round(v, 6) for v in mean], [round(v, 6) for v in std],
    )


# ---------------------------------------------------------------- artifacts


def save_dataset(ds: Dataset, out_dir: str | Path, meta: dict) -> None:
    with staged_dir(out_dir) as d:
        for name in SPLITS:
            split: Split = getattr(ds, name)
            save_tensors(
                d / f"{name}.safetensors",
                {"images": split.images, "labels": split.labels},
                {**meta, "split": name, "classes": ds.classes, "mean": ds.mean, "std": ds.std},
            )


def load_dataset(data_dir: str | Path) -> Dataset:
    data_dir = Path(data_dir)
    splits, meta = {}, {}
    for name in SPLITS:
        tensors, meta = load_tensors(data_dir / f"{name}.safetensors", expect_meta={"split": name})
        if set(tensors) != {"images", "labels"} or tensors["images"].dtype != torch.uint8:
            raise ArtifactError(f"{data_dir / name}.safetensors: not a prepared split")
        splits[name] = Split(tensors["images"], tensors["labels"])
    return Dataset(**splits, classes=meta["classes"], mean=meta["mean"], std=meta["std"])


# ---------------------------------------------------------------- batches on the device


def normalize(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 [B, C, H, W] -> float [B, C, H, W], per-channel standardised."""
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1)
    return (images.float().div_(255) - m) / s


def augment_batch(x: torch.Tensor, aug: Augment, g: torch.Generator) -> torch.Tensor:
    """Random crop (zero padding `crop_padding`) and random horizontal flip, per sample.

    x: float [B, C, H, W] (already normalised, so padding is the mean); g: CPU generator.
    """
    b, _, h, w = x.shape
    pad = aug.crop_padding
    if pad:
        padded = F.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=g).to(x.device)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=g).to(x.device)
        rows = (oy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        bidx = torch.arange(b, device=x.device)[:, None, None, None]
        cidx = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
        x = padded[bidx, cidx, rows, cols]
    if aug.hflip:
        flip = (torch.rand(b, generator=g) < 0.5).to(x.device)[:, None, None, None]
        x = torch.where(flip, x.flip(3), x)
    return x


def train_batches(
    split: Split, ds: Dataset, batch_size: int, aug: Augment, seed: int, *, rank: int = 0, world: int = 1
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled, augmented batches; `seed` fixes order and augmentation.

    With world > 1, each rank takes every world-th sample of the same permutation, so the
    ranks together see exactly the single-process epoch (batch_size is per rank).
    """
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(split), generator=g)
    usable = len(perm) // (batch_size * world) * (batch_size * world)
    if usable == 0:
        raise DataError(f"data.batch_size={batch_size * world} exceeds the {len(split)} train images")
    mine = perm[:usable].view(-1, world)[:, rank]
    for idx in mine.split(batch_size):
        idx = idx.to(split.images.device)
        x = normalize(split.images[idx], ds.mean, ds.std)
        yield augment_batch(x, aug, g), split.labels[idx]


def eval_batches(split: Split, ds: Dataset, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(split), batch_size):
        x = normalize(split.images[start : start + batch_size], ds.mean, ds.std)
        yield x, split.labels[start : start + batch_size]
