"""Data splits: deterministic for a seed, train and val disjoint, ranks sharing one epoch."""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image

from helpers import tiny_raw
from structlth.config import Augment, parse_params
from structlth.data import build_dataset, train_batches

N_PER_CLASS = 12


@pytest.fixture
def tree(tmp_path):
    """An ImageFolder tree of 8x8 grey PNGs; image k is filled with the value 5k: its id."""
    k = 0
    for sub, n in (("train", N_PER_CLASS), ("val", 4)):
        for c in ("a", "b", "c"):
            (tmp_path / sub / c).mkdir(parents=True)
            for i in range(n):
                Image.new("L", (8, 8), color=5 * k).save(tmp_path / sub / c / f"{i}.png")
                k += 1
    return tmp_path


def _data_params(tree, **update):
    raw = copy.deepcopy(tiny_raw())
    raw["data"].update(
        dataset="tiny_imagenet", root=str(tree), image_size=8, val_size=6, train_subset=None, test_subset=None, batch_size=4, **update
    )
    raw["bench"]["batch_sizes"] = [2]
    return parse_params(raw).data


def _ids(images: torch.Tensor) -> list[int]:
    return (images[:, 0, 0, 0].long() // 5).tolist()


def test_splits_are_deterministic_disjoint_and_follow_the_seed(tree):
    a, b = build_dataset(_data_params(tree)), build_dataset(_data_params(tree))
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.val.labels, b.val.labels)
    train, val = set(_ids(a.train.images)), set(_ids(a.val.images))
    assert len(val) == 6 and len(train) == 3 * N_PER_CLASS - 6 and not train & val
    assert train | val == set(range(3 * N_PER_CLASS))  # every train image is in exactly one split
    assert set(_ids(a.test.images)) == set(range(3 * N_PER_CLASS, 3 * N_PER_CLASS + 12))  # val/ is the test set
    other = build_dataset(_data_params(tree, split_seed=1))
    assert set(_ids(other.val.images)) != val


def test_ranks_take_disjoint_shares_of_the_single_process_epoch(tree):
    ds = build_dataset(_data_params(tree))
    ds = ds.__class__(ds.train, ds.val, ds.test, ds.classes, [0.0], [1 / 255])  # normalised value = pixel value
    aug = Augment(crop_padding=0, hflip=False)
    batches = lambda it: [[int(round(float(v))) // 5 for v in x[:, 0, 0, 0]] for x, _ in it]  # noqa: E731
    ids = lambda it: [i for b in batches(it) for i in b]  # noqa: E731
    single = batches(train_batches(ds.train, ds, 6, aug, seed=3))
    ranks = [batches(train_batches(ds.train, ds, 3, aug, seed=3, rank=r, world=2)) for r in (0, 1)]
    for step, (a, b) in enumerate(zip(*ranks)):  # each step's global batch is the single-process batch
        assert not set(a) & set(b) and sorted(a + b) == sorted(single[step]), step
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    single = [i for b in single for i in b]
    assert ids(train_batches(ds.train, ds, 6, aug, seed=3)) == single  # the seed fixes the order
    assert ids(train_batches(ds.train, ds, 6, aug, seed=4)) != single


def test_fashion_mnist_is_read_in_place_from_a_folder_of_its_gz_files(tmp_path):
    """data.root may be Debian's read-only folder itself: prepare reads it and writes nothing there."""
    from structlth.data import DEBIAN_FASHION_MNIST, FASHION_MNIST_FILES

    root = tmp_path / "gz"
    root.mkdir()
    for f in FASHION_MNIST_FILES:
        (root / f"{f}.gz").symlink_to(DEBIAN_FASHION_MNIST / f"{f}.gz")
    raw = copy.deepcopy(tiny_raw())
    raw["data"]["root"] = str(root)
    ds = build_dataset(parse_params(raw).data)
    assert len(ds.train) == raw["data"]["train_subset"] and ds.classes[0] == "T-shirt/top"
    assert sorted(p.name for p in root.iterdir()) == sorted(f"{f}.gz" for f in FASHION_MNIST_FILES)
