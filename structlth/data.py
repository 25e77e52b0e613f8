"""Datasets: small ones as uint8 tensors, ImageFolder trees as an index of files.

Small datasets (Fashion-MNIST, CIFAR) are prepared once into safetensors: a split is images
uint8 [N, C, H, W] + labels int64 [N], and normalisation and augmentation (random crop after
padding with the mean, horizontal flip) run batched on the training device. ImageFolder trees
(Tiny-ImageNet, ImageNet, any `imagefolder`) are prepared into `index.json` (paths, labels,
splits, classes, the listing's digest) and streamed from disk every epoch
(structlth.imagefolder); `data.loader: memory` decodes a small tree into tensors instead.
"""

from __future__ import annotations

import gzip
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from structlth.artifacts import load_tensors, read_json, save_tensors, staged_dir, write_json
from structlth.config import Augment, DataParams, params_hash
from structlth.errors import ArtifactError, DataError
from structlth.imagefolder import StreamSplit, Tree, decode, eval_transform, scan

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
SPLITS = ("train", "val", "test")
INDEX = "index.json"
INDEX_FORMAT = "structlth.index/1"
STATS_SAMPLE = 1000  # train images a streamed dataset's mean and std are estimated from


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def to(self, device: torch.device | str) -> Split:
        return Split(self.images.to(device), self.labels.to(device))

    def head(self, n: int) -> torch.Tensor:
        """The first n images: uint8 [n, C, H, W]."""
        return self.images[:n]


@dataclass(frozen=True)
class Dataset:
    train: Split | StreamSplit
    val: Split | StreamSplit
    test: Split | StreamSplit
    classes: list[str]
    mean: list[float]  # per channel, in [0, 1] units, from the train split
    std: list[float]
    dropped: dict[str, list[str]] = field(default_factory=dict)  # what prepare left out, and why

    @property
    def in_channels(self) -> int:
        return self.train.image_shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device | str) -> Dataset:
        return Dataset(
            self.train.to(device),
            self.val.to(device),
            self.test.to(device),
            self.classes,
            self.mean,
            self.std,
            self.dropped,
        )

    def summary(self) -> dict:
        """Split sizes, classes and counts of dropped files: prepare's DVC metrics."""
        sizes = {f"{name}_images": len(getattr(self, name)) for name in SPLITS}
        return {**sizes, "classes": len(self.classes), **{f"{k}_files": len(v) for k, v in self.dropped.items()}}


# ---------------------------------------------------------------- raw sources -> uint8 tensors


def _fashion_mnist_gz(root: Path) -> Path | None:
    """data.root when it holds the four idx .gz files (Debian's folder is the default), else
    None: another folder is never read in its place, so a mistyped data.root is an error."""
    return root if all((root / f"{f}.gz").is_file() for f in FASHION_MNIST_FILES) else None


def _fashion_mnist(p: DataParams) -> tuple[Split, Split, list[str]]:
    """Read from the .gz files, decompressed into a temporary folder (data.root is only read),
    or from torchvision's own layout under data.root, or torchvision's checked download."""
    from torchvision.datasets import FashionMNIST

    gz = _fashion_mnist_gz(Path(p.root))
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(tmp) if gz else Path(p.root)
        if gz:
            (where / "FashionMNIST" / "raw").mkdir(parents=True)
            for f in FASHION_MNIST_FILES:
                with gzip.open(gz / f"{f}.gz", "rb") as src, open(where / "FashionMNIST" / "raw" / f, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        try:
            sets = [FashionMNIST(str(where), train=t, download=p.download and not gz) for t in (True, False)]
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


CIFAR_LAYOUT = {  # what torchvision's CIFAR readers look for under data.root (the "python version" archives)
    "cifar10": ("cifar-10-python.tar.gz", "cifar-10-batches-py", ("data_batch_1", "data_batch_5", "test_batch", "batches.meta")),
    "cifar100": ("cifar-100-python.tar.gz", "cifar-100-python", ("train", "test", "meta")),
}


def raw_layout(p: DataParams) -> str:
    """What data.root must hold for p.dataset, and how to put it there without network."""
    if p.dataset == "fashion_mnist":
        return (
            f"the four idx files {', '.join(f + '.gz' for f in FASHION_MNIST_FILES)} (or torchvision's FashionMNIST/raw/);"
            f" offline: apt-get install dataset-fashion-mnist (make setup does) puts them in {DEBIAN_FASHION_MNIST},"
            " where the repository's data/fashion-mnist links"
        )
    if p.dataset in CIFAR_LAYOUT:
        archive, folder, files = CIFAR_LAYOUT[p.dataset]
        return (
            f"{folder}/ with {', '.join(files)}, ...; offline: copy {archive} (the CIFAR site's python version)"
            f" from a machine with network and unpack it into data.root"
        )
    return "train/<class>/<images> and val/<class>/<images> (an ImageFolder tree; Tiny-ImageNet's own val/ layout is read too)"


def has_raw(p: DataParams) -> bool:
    """Whether data.root (or Debian's folder, for Fashion-MNIST) holds p.dataset's raw files."""
    root = Path(p.root)
    if p.dataset == "fashion_mnist":
        return _fashion_mnist_gz(root) is not None or all((root / "FashionMNIST" / "raw" / f).is_file() for f in FASHION_MNIST_FILES)
    if p.dataset in CIFAR_LAYOUT:
        _, folder, files = CIFAR_LAYOUT[p.dataset]
        return all((root / folder / f).is_file() for f in files)
    return all((root / sub).is_dir() for sub in ("train", "val"))


def _cifar(p: DataParams) -> tuple[Split, Split, list[str]]:
    from torchvision.datasets import CIFAR10, CIFAR100

    cls = CIFAR10 if p.dataset == "cifar10" else CIFAR100
    try:
        sets = [cls(p.root, train=t, download=p.download) for t in (True, False)]
    except (RuntimeError, OSError) as err:  # not found; or the download failed (URLError is an OSError)
        how = f"the download failed ({type(err).__name__}: {err})" if p.download else "data.download is false"
        raise DataError(f"{p.dataset}: not found under data.root={p.root!r} ({how}). data.root must hold {raw_layout(p)}") from None

    def split(s) -> Split:
        images = torch.from_numpy(np.ascontiguousarray(s.data)).permute(0, 3, 1, 2).contiguous()
        return Split(images, torch.tensor(s.targets, dtype=torch.long))

    return split(sets[0]), split(sets[1]), list(sets[0].classes)


def image_side(p: DataParams) -> int:
    return p.image_size or (64 if p.dataset == "tiny_imagenet" else 224)


def scan_tree(p: DataParams, workers: int) -> Tree:
    """Scan data.root, saying on stderr what is left out (nothing is dropped silently)."""
    tree = scan(p.root, workers)
    for what, names in (
        ("ignored {} file(s) that are not images", tree.ignored),
        ("dropped {} image file(s) that cannot be decoded", tree.unreadable),
    ):
        if names:
            print(f"{p.dataset}: {what.format(len(names))}: {', '.join(names[:10])}{' ...' if len(names) > 10 else ''}", file=sys.stderr)
    return tree


def _image_folder(p: DataParams, workers: int = 0) -> tuple[Split, Split, list[str], dict[str, list[str]]]:
    """A small tree decoded into memory, each image at its evaluation view."""
    tree = scan_tree(p, workers)
    tf = eval_transform(image_side(p), p.augment)

    def split(files: list[tuple[str, int]]) -> Split:
        images = torch.stack([tf(decode(Path(p.root) / f)) for f, _ in files])
        return Split(images, torch.tensor([y for _, y in files], dtype=torch.long))

    return split(tree.train), split(tree.test), tree.classes, {"ignored": tree.ignored, "unreadable": tree.unreadable}


def carve(n_train: int, n_test: int, p: DataParams) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices (sorted) of train, val (both from the n_train pool) and test, from data.split_seed."""
    if p.val_size >= n_train:
        raise DataError(f"data.val_size={p.val_size} must be smaller than the {n_train} train images")
    if p.train_subset is not None and p.train_subset > n_train - p.val_size:
        raise DataError(
            f"data.train_subset={p.train_subset} is larger than the dataset: {p.dataset} has"
            f" {n_train} train images, {n_train - p.val_size} after data.val_size={p.val_size}"
        )
    if p.test_subset is not None and p.test_subset > n_test:
        raise DataError(f"data.test_subset={p.test_subset} is larger than the dataset: {p.dataset} has {n_test} test images")
    g = torch.Generator().manual_seed(p.split_seed)
    perm = torch.randperm(n_train, generator=g)
    val_idx, train_idx = perm[: p.val_size], perm[p.val_size :]
    if p.train_subset is not None:
        train_idx = train_idx[: p.train_subset]
    test_idx = torch.randperm(n_test, generator=g)[: p.test_subset or n_test]
    return train_idx.sort().values, val_idx.sort().values, test_idx.sort().values


def _stats(images: torch.Tensor) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (in [0, 1] units) of uint8 [N, C, H, W]."""
    x = images.float() / 255
    mean = x.mean(dim=(0, 2, 3)).tolist()
    std = x.std(dim=(0, 2, 3)).clamp_min(1e-3).tolist()
    return [round(v, 6) for v in mean], [round(v, 6) for v in std]


def build_dataset(p: DataParams, workers: int = 0) -> Dataset:
    """Read the raw dataset into memory and carve train / val / test (data.split_seed)."""
    reader = {"fashion_mnist": _fashion_mnist, "cifar10": _cifar, "cifar100": _cifar}
    if p.dataset in reader:
        full_train, full_test, classes = reader[p.dataset](p)
        dropped: dict[str, list[str]] = {}
    else:
        full_train, full_test, classes, dropped = _image_folder(p, workers)
    train_idx, val_idx, test_idx = carve(len(full_train), len(full_test), p)
    train = _take(full_train, train_idx)
    return Dataset(train, _take(full_train, val_idx), _take(full_test, test_idx), classes, *_stats(train.images), dropped)


def build_index(p: DataParams, workers: int = 0) -> dict:
    """An ImageFolder tree's index (what `index.json` holds): relative paths and labels per
    split, the classes, the listing's digest, what was left out, and the mean and std of up to
    STATS_SAMPLE train images (a seeded sample, at their evaluation view)."""
    tree = scan_tree(p, workers)
    train_idx, val_idx, test_idx = carve(len(tree.train), len(tree.test), p)
    splits = {
        name: {"paths": [files[i][0] for i in idx.tolist()], "labels": [files[i][1] for i in idx.tolist()]}
        for name, files, idx in (("train", tree.train, train_idx), ("val", tree.train, val_idx), ("test", tree.test, test_idx))
    }
    index = {
        "format": INDEX_FORMAT,
        "dataset": p.dataset,
        "root": p.root,
        "image_size": image_side(p),
        "classes": tree.classes,
        "listing_digest": tree.digest,
        "splits": splits,
        "dropped": {"ignored": tree.ignored, "unreadable": tree.unreadable},
        "mean": [],
        "std": [],
    }
    train = _stream(index, "train", p.augment, workers)
    sample = torch.randperm(len(train), generator=torch.Generator().manual_seed(p.split_seed))[:STATS_SAMPLE].sort().values
    images = torch.cat([x for x, _ in _subset(train, sample).eval_batches(256)])
    index["mean"], index["std"] = _stats(images)
    return index


def _stream(index: dict, name: str, aug: Augment, workers: int, decode: str = "workers", mean: list[float] | None = None) -> StreamSplit:
    split = index["splits"][name]
    fill = tuple(round(255 * m) for m in (mean or [0.0, 0.0, 0.0]))
    return StreamSplit(
        Path(index["root"]),
        np.array(split["paths"], dtype=np.bytes_),
        torch.tensor(split["labels"], dtype=torch.long),
        index["image_size"],
        aug,
        fill,
        workers,
        decode=decode,
    )


def _subset(split: StreamSplit, idx: torch.Tensor) -> StreamSplit:
    return replace(split, paths=split.paths[idx.numpy()], labels=split.labels[idx])


def _take(split: Split, idx: torch.Tensor) -> Split:
    return Split(split.images[idx].contiguous(), split.labels[idx].contiguous())


# ---------------------------------------------------------------- artifacts


def prepare_data(p: DataParams, out_dir: str | Path, workers: int = 0) -> dict:
    """Write the prepared dataset into out_dir (an index for streamed trees, tensors otherwise),
    stamped with the dataset and the hash of `p`, and return its summary (split sizes, classes,
    files left out)."""
    meta = {"dataset": p.dataset, "params_hash": params_hash(p)}
    if p.streams:
        index = build_index(p, workers)
        with staged_dir(out_dir) as d:
            write_json(d / INDEX, {**index, "augment": p.augment.model_dump(), **meta})
        return load_dataset(out_dir).summary()
    ds = build_dataset(p, workers)
    save_dataset(ds, out_dir, meta)
    return ds.summary()


def save_dataset(ds: Dataset, out_dir: str | Path, meta: dict) -> None:
    with staged_dir(out_dir) as d:
        for name in SPLITS:
            split: Split = getattr(ds, name)
            save_tensors(
                d / f"{name}.safetensors",
                {"images": split.images, "labels": split.labels},
                {**meta, "split": name, "classes": ds.classes, "mean": ds.mean, "std": ds.std},
            )


def load_dataset(data_dir: str | Path, workers: int = 0, decode: str = "workers") -> Dataset:
    """A prepared dataset. A streamed one reads files in `workers` processes (0: the calling
    process) and decodes them there or on the training device (decode: workers|device|auto)."""
    data_dir = Path(data_dir)
    if (data_dir / INDEX).is_file():
        return _load_index(data_dir / INDEX, workers, decode)
    splits, meta = {}, {}
    for name in SPLITS:
        tensors, meta = load_tensors(data_dir / f"{name}.safetensors", expect_meta={"split": name})
        if set(tensors) != {"images", "labels"} or tensors["images"].dtype != torch.uint8:
            raise ArtifactError(f"{data_dir / name}.safetensors: not a prepared split")
        splits[name] = Split(tensors["images"], tensors["labels"])
    return Dataset(**splits, classes=meta["classes"], mean=meta["mean"], std=meta["std"])


def _load_index(path: Path, workers: int, decode: str) -> Dataset:
    index = read_json(path)
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        raise ArtifactError(f"{path}: not a structlth index ({INDEX_FORMAT}); rerun prepare: dvc repro prepare")
    if not Path(index["root"]).is_dir():
        raise DataError(f"{path}: indexes the tree at {index['root']!r}, which is not there; point data.root at it")
    aug = Augment(**index["augment"])
    splits = {name: _stream(index, name, aug, workers, decode, index["mean"]) for name in SPLITS}
    return Dataset(**splits, classes=index["classes"], mean=index["mean"], std=index["std"], dropped=index["dropped"])


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
    split: Split | StreamSplit, ds: Dataset, batch_size: int, aug: Augment, seed: int, *, rank: int = 0, world: int = 1
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of shuffled, augmented, normalised batches: float [B, C, H, W], labels [B];
    `seed` fixes order and augmentation. A streamed split augments in its workers, with the
    augmentation its index was prepared with (`aug` is for the in-memory path).

    With world > 1, each rank takes every world-th sample of the same permutation, so the
    ranks together see exactly the single-process epoch (batch_size is per rank). Both paths
    draw the same permutation of `seed`.
    """
    if len(split) // (batch_size * world) == 0:
        raise DataError(f"data.batch_size={batch_size * world} exceeds the {len(split)} train images")
    if isinstance(split, StreamSplit):
        for x, y in split.train_batches(batch_size, seed, rank, world):
            yield normalize(x, ds.mean, ds.std), y
        return
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(split), generator=g)
    usable = len(perm) // (batch_size * world) * (batch_size * world)
    mine = perm[:usable].view(-1, world)[:, rank]
    for idx in mine.split(batch_size):
        idx = idx.to(split.images.device)
        x = normalize(split.images[idx], ds.mean, ds.std)
        yield augment_batch(x, aug, g), split.labels[idx]


def scoring_batches(split: Split | StreamSplit, ds: Dataset, batch_size: int, n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """n batches of a random sample of the split drawn by `seed`, at their evaluation view:
    what a pruning criterion scores on. An image folder lists its images class by class, so its
    first batches would hold one class. x [B, C, H, W] normalised, y [B]."""
    idx = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[: n * batch_size]
    sample = _subset(split, idx) if isinstance(split, StreamSplit) else _take(split, idx.to(split.images.device))
    return list(eval_batches(sample, ds, batch_size))


def eval_batches(split: Split | StreamSplit, ds: Dataset, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The split in order, normalised: float [B, C, H, W], labels [B]."""
    if isinstance(split, StreamSplit):
        for x, y in split.eval_batches(batch_size):
            yield normalize(x, ds.mean, ds.std), y
        return
    for start in range(0, len(split), batch_size):
        x = normalize(split.images[start : start + batch_size], ds.mean, ds.std)
        yield x, split.labels[start : start + batch_size]
