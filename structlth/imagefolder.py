"""ImageFolder trees: scan and check them, decode their files, stream them in epochs.

A tree is `<root>/train/<class>/**/<image>` and `<root>/val/<class>/**/<image>` (val/ is the
test set). Tiny-ImageNet's own val/ layout (`val/images/` + `val/val_annotations.txt`) is read
as it comes. Images are decoded by torchvision (JPEG, PNG, GIF, WebP) as RGB uint8 [3, H, W].

Streaming: a DataLoader whose worker processes decode and augment; each sample's random crop
and flip come from a seed derived from (epoch seed, index), so batches do not depend on the
number of workers. The order is torch's DistributedSampler over one seeded permutation: under
torchrun each rank reads its share of the single-process epoch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from structlth.config import Augment
from structlth.errors import DataError

if TYPE_CHECKING:  # torchvision is imported where images are decoded: it costs every stage a second and a half
    from torchvision.transforms import v2

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp")  # what torchvision.io decodes
FORMATS = ("JPEG", "PNG", "GIF", "WEBP")  # the same, as PIL names the formats it identifies
TINY_VAL_ANNOTATIONS = "val_annotations.txt"
PARALLEL_CHECK = 2000  # trees with more files than this are checked by a process pool


@dataclass(frozen=True)
class Tree:
    """What a scan found: files relative to the root, with class indices."""

    classes: list[str]
    train: list[tuple[str, int]]  # (path, label), sorted by path
    test: list[tuple[str, int]]  # from val/
    ignored: list[str] = field(default_factory=list)  # not image files (by name)
    unreadable: list[str] = field(default_factory=list)  # image names, but not an image torchvision decodes
    digest: str = ""  # of every file's (path, size, mtime): the listing prepare read


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _listing_digest(root: Path, files: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _class_files(root: Path, sub: str) -> dict[str, list[Path]]:
    """Class folder name -> its files, for train/ or a class-folder val/."""
    folders = sorted(p for p in (root / sub).iterdir() if p.is_dir())
    if not folders:
        raise DataError(f"{root / sub}: no class folders (an ImageFolder has one folder per class)")
    return {f.name: _files(f) for f in folders}


def _tiny_val(root: Path, classes: list[str]) -> dict[str, list[Path]]:
    """Tiny-ImageNet's val/: images/ plus a table of `file<TAB>class<TAB>box...` lines."""
    table = root / "val" / TINY_VAL_ANNOTATIONS
    out: dict[str, list[Path]] = {c: [] for c in classes}
    for n, line in enumerate(table.read_text().splitlines(), 1):
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in out:
            raise DataError(f"{table}:{n}: expected '<file>\\t<class>' with a class of train/, got {line[:80]!r}")
        out[parts[1]].append(root / "val" / "images" / parts[0])
    return out


def scan(root: str | Path, workers: int = 0) -> Tree:
    """List and check a tree. Raises DataError for a missing split, an empty class folder, or
    val/ classes that differ from train/; files that are not images are kept out and listed."""
    root = Path(root)
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise DataError(f"data.root={str(root)!r} needs {sub}/ as an ImageFolder (one folder per class)")
    train = _class_files(root, "train")
    classes = list(train)
    tiny = (root / "val" / TINY_VAL_ANNOTATIONS).is_file()
    val = _tiny_val(root, classes) if tiny else _class_files(root, "val")
    if not tiny and set(val) != set(classes):
        missing, extra = sorted(set(classes) - set(val)), sorted(set(val) - set(classes))
        raise DataError(
            f"{root / 'val'}: its classes differ from train/'s: "
            + "; ".join(s for s in (f"missing {_few(missing)}" if missing else "", f"extra {_few(extra)}" if extra else "") if s)
        )
    every = _files(root / "train") + _files(root / "val")
    images = {p for files in (*train.values(), *val.values()) for p in files if _is_image(p)}
    for sub, split in (("train", train), ("val", val)):
        for c, files in split.items():
            if not any(p in images for p in files):
                raise DataError(f"{root / sub / c}: no images in this class folder ({', '.join(IMAGE_SUFFIXES)})")
    bad = set(_unreadable(sorted(images), workers))

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    def labelled(split: dict[str, list[Path]]) -> list[tuple[str, int]]:
        return sorted((rel(p), classes.index(c)) for c, files in split.items() for p in files if p in images and p not in bad)

    return Tree(
        classes,
        labelled(train),
        labelled(val),
        ignored=[rel(p) for p in every if not _is_image(p) and p.name != TINY_VAL_ANNOTATIONS],
        unreadable=sorted(rel(p) for p in bad),
        digest=_listing_digest(root, every),
    )


def _few(names: Sequence[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _not_decodable(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.format not in FORMATS
    except (UnidentifiedImageError, OSError):
        return True


def _unreadable(paths: list[Path], workers: int) -> list[Path]:
    """Files whose header is not one torchvision decodes (PIL reads headers only)."""
    if workers and len(paths) > PARALLEL_CHECK:
        with ProcessPoolExecutor(workers) as pool:
            flags = list(pool.map(_not_decodable, paths, chunksize=256))
    else:
        flags = [_not_decodable(p) for p in paths]
    return [p for p, f in zip(paths, flags) if f]


# ---------------------------------------------------------------- decoding and augmentation


def eval_transform(size: int, aug: Augment) -> v2.Transform:
    """Resize the short side and centre-crop `size` (ImageNet's 256/224 when training uses
    random resized crops, else resize to `size` itself)."""
    from torchvision.transforms import v2

    resize = round(size * 8 / 7) if aug.random_resized_crop else size
    return v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(size)])


def train_transform(size: int, aug: Augment, fill: Sequence[int]) -> v2.Transform:
    """RandomResizedCrop, or the evaluation view plus a random crop after padding with `fill`
    (the mean pixel, as the in-memory path pads); then a random horizontal flip."""
    from torchvision.transforms import v2

    steps: list[v2.Transform] = []
    if aug.random_resized_crop:
        steps.append(v2.RandomResizedCrop(size, antialias=True))
    else:
        steps.append(eval_transform(size, aug))
        if aug.crop_padding:
            steps.append(v2.RandomCrop(size, padding=aug.crop_padding, fill=list(fill)))
    if aug.hflip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


def decode(path: Path) -> torch.Tensor:
    """One file -> uint8 [3, H, W]; DataError naming the file when it cannot be decoded."""
    from torchvision.io import ImageReadMode, decode_image

    try:
        return decode_image(str(path), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError, ValueError) as err:
        raise DataError(
            f"{path}: cannot decode this image ({err}); replace or delete it, then rerun dvc repro (prepare re-indexes the tree)"
        ) from None


def sample_seed(seed: int, index: int) -> int:
    """The random stream of one sample in one epoch, independent of which worker decodes it."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{index}".encode()).digest()[:8], "little") >> 1


def _transformed(transform: v2.Transform, img: torch.Tensor, seed: int | None) -> torch.Tensor:
    """transform(img) with the random stream of `seed` (None: no randomness), leaving the
    process's own stream untouched. Crop and flip draws are CPU draws even for CUDA images."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return transform(img)


class ImageFiles(torch.utils.data.Dataset):
    """Item (index, seed) -> (uint8 [3, size, size], label); seed None: no randomness.

    raw: return the file's bytes instead, (bytes, label, seed, path), for decoding batched on
    the training device (`decode_on_device`). Plain bytes travel from worker processes through
    the pipe: a tensor per file would each take a shared-memory handle (and stall the loader)."""

    def __init__(self, root: Path, paths: np.ndarray, labels: torch.Tensor, transform: v2.Transform, raw: bool = False) -> None:
        self.root, self.paths, self.labels, self.transform, self.raw = root, paths, labels, transform, raw

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, item: tuple[int, int | None]) -> tuple:
        i, seed = item
        path = self.root / self.paths[i].decode()
        if self.raw:
            return path.read_bytes(), int(self.labels[i]), seed, path
        return _transformed(self.transform, decode(path), seed), int(self.labels[i])


def _items(batch: list[tuple]) -> list[tuple]:
    return batch


def decode_on_device(batch: list[tuple], transform: v2.Transform, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw files -> uint8 [B, 3, size, size] on `device`: JPEGs decoded together there (nvJPEG
    on CUDA), other formats on the CPU; then each sample's transform with its seed."""
    from torchvision.io import ImageReadMode, decode_jpeg

    blobs, labels, seeds, paths = zip(*batch)
    datas = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
    jpeg = [i for i, b in enumerate(blobs) if b[:2] == b"\xff\xd8"]
    images: list[torch.Tensor | None] = [None] * len(datas)
    try:
        for i, img in zip(jpeg, decode_jpeg([datas[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)):
            images[i] = img
    except RuntimeError:
        for i in jpeg:  # find the file that failed, and name it
            decode(paths[i])
        raise
    images = [img if img is not None else decode(paths[i]).to(device) for i, img in enumerate(images)]
    x = torch.stack([_transformed(transform, img, seed) for img, seed in zip(images, seeds)])
    return x, torch.tensor(labels)


class _Seeded(Sampler):
    """Indices of `order`, each paired with its sample seed (None: evaluation)."""

    def __init__(self, order: Sampler | Sequence[int], seed: int | None) -> None:
        self.order, self.seed = order, seed

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[int, int | None]]:
        for i in self.order:
            yield int(i), None if self.seed is None else sample_seed(self.seed, int(i))


@dataclass(frozen=True)
class StreamSplit:
    """A split read from disk on every pass. paths: bytes array [N] (one block of memory, so
    forked workers share it instead of copying), labels: int64 [N]."""

    root: Path
    paths: np.ndarray
    labels: torch.Tensor
    size: int
    aug: Augment
    fill: tuple[int, ...]  # the mean pixel, uint8 per channel
    workers: int = 0
    device: torch.device = torch.device("cpu")
    decode: str = "workers"  # where images are decoded: workers | device | auto (the device if CUDA)

    @property
    def device_decode(self) -> bool:
        """Whether workers only read files and the training device decodes them."""
        return self.decode == "device" or (self.decode == "auto" and self.device.type == "cuda")

    def to(self, device: torch.device | str) -> StreamSplit:
        return replace(self, device=torch.device(device))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (3, self.size, self.size)

    def _loader(
        self, sampler: Sampler, batch_size: int, transform: v2.Transform, drop_last: bool
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        files = ImageFiles(self.root, self.paths, self.labels, transform, raw=self.device_decode)
        loader = DataLoader(
            files,
            batch_size,
            sampler=sampler,
            drop_last=drop_last,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda" and not self.device_decode,
            prefetch_factor=4 if self.workers else None,
            collate_fn=_items if self.device_decode else None,
        )
        try:
            for batch in loader:
                x, y = decode_on_device(batch, transform, self.device) if self.device_decode else batch
                yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        except DataError as err:  # from a worker: keep the message, drop the worker's traceback
            raise DataError(str(err).rstrip().splitlines()[-1].split("DataError: ", 1)[-1]) from None

    def train_batches(self, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One augmented epoch: uint8 [B, 3, size, size] on the device, labels [B]; the
        permutation of seed, each rank taking every world-th sample (batch_size per rank)."""
        order = DistributedSampler(self, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        return self._loader(_Seeded(order, seed), batch_size, train_transform(self.size, self.aug, self.fill), drop_last=True)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self._loader(_Seeded(range(len(self)), None), batch_size, eval_transform(self.size, self.aug), drop_last=False)

    def head(self, n: int) -> torch.Tensor:
        """The first n images, evaluation view: uint8 [n, 3, size, size] on the device."""
        n = min(n, len(self))
        return torch.cat(
            [x for x, _ in self._loader(_Seeded(range(n), None), max(n, 1), eval_transform(self.size, self.aug), drop_last=False)]
        )


def write_tree(root: str | Path, classes: int = 3, per_class: int = 10, val_per_class: int = 3, side: int = 48, seed: int = 0) -> Path:
    """A random ImageFolder tree of JPEGs (for tests and benchmarks): sizes vary around `side`
    so resizing is exercised; each image is noise around a class colour. Returns root."""
    from torchvision.io import encode_jpeg

    root = Path(root)
    rng = np.random.default_rng(seed)
    for sub, n in (("train", per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = root / sub / f"class{c:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            colour = rng.integers(0, 256, 3)
            for i in range(n):
                h, w = side + int(rng.integers(0, side // 2)), side + int(rng.integers(0, side // 2))
                pixels = np.clip(colour + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
                encode_jpeg(torch.from_numpy(pixels).permute(2, 0, 1).contiguous(), quality=90).numpy().tofile(folder / f"{i:05d}.JPEG")
    return root
