"""ImageFolder trees: an index instead of pixels, streamed batches that are deterministic and
equal to the in-memory path's, and a clear answer for every kind of bad tree."""

from __future__ import annotations

import copy
import json
import os
import shutil

import pytest
import torch

from helpers import tiny_raw
from structlth.checks import check_runnable
from structlth.config import Augment, parse_params
from structlth.data import eval_batches, load_dataset, prepare_data, scoring_batches, train_batches
from structlth.errors import DataError, ParamsError
from structlth.imagefolder import ImageFiles, sample_seed, scan, train_transform, write_tree


@pytest.fixture
def tree(tmp_path):
    return write_tree(tmp_path / "tree", classes=3, per_class=10, val_per_class=3, side=24)


def _params(root, **data):
    raw = copy.deepcopy(tiny_raw())
    raw["data"].update(dataset="imagenet", root=str(root), image_size=16, val_size=6, train_subset=None, test_subset=None, batch_size=4)
    raw["data"]["augment"] = {"crop_padding": 2, "hflip": True}
    raw["data"].update(data)
    raw["bench"]["batch_sizes"] = [2]
    return parse_params(raw).data


def _prepared(tmp_path, p, workers=0, name="data"):
    summary = prepare_data(p, tmp_path / name, workers)
    return summary, load_dataset(tmp_path / name, workers)


def _epoch(ds, seed=3, batch_size=4, **kw):
    aug = Augment(crop_padding=2)  # the in-memory path's; a streamed split carries its own
    return [(x.clone(), y.clone()) for x, y in train_batches(ds.train, ds, batch_size, aug, seed, **kw)]


def test_prepare_writes_an_index_of_paths_not_pixels(tmp_path, tree):
    summary, ds = _prepared(tmp_path, _params(tree))
    files = list((tmp_path / "data").iterdir())
    assert [f.name for f in files] == ["index.json"] and files[0].stat().st_size < 8_000
    index = json.loads(files[0].read_text())
    assert index["classes"] == ["class000", "class001", "class002"] and len(index["listing_digest"]) == 16
    assert summary == {"train_images": 24, "val_images": 6, "test_images": 9, "classes": 3, "ignored_files": 0, "unreadable_files": 0}
    train, val = set(index["splits"]["train"]["paths"]), set(index["splits"]["val"]["paths"])
    assert not train & val and all(p.startswith("train/") for p in train | val)
    assert all(p.startswith("val/") for p in index["splits"]["test"]["paths"])
    assert ds.in_channels == 3 and ds.train.image_shape == (3, 16, 16)


def test_streamed_epochs_do_not_depend_on_workers_and_follow_the_seed(tmp_path, tree):
    _, ds = _prepared(tmp_path, _params(tree))
    one = _epoch(ds)
    two = _epoch(load_dataset(tmp_path / "data", workers=2))
    assert len(one) == 6 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(one, two))
    other = _epoch(ds, seed=4)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(one, other))
    assert one[0][0].dtype == torch.float32 and one[0][0].shape == (4, 3, 16, 16)


@pytest.mark.parametrize("augment", [{"crop_padding": 2, "hflip": True}, {"crop_padding": 0, "hflip": True, "random_resized_crop": True}])
def test_decoding_on_the_device_gives_the_workers_batches(tmp_path, tree, augment):
    """runtime.decode: device (nvJPEG on CUDA) runs here on the CPU: the same decoder, so the same bytes."""
    _, ds = _prepared(tmp_path, _params(tree, augment=augment))
    on_device = load_dataset(tmp_path / "data", workers=2, decode="device")
    assert on_device.train.device_decode and not ds.train.device_decode
    for a, b in zip(_epoch(ds), _epoch(on_device)):
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(ds.test.head(4), on_device.test.head(4))


def test_streamed_and_in_memory_paths_share_order_and_evaluation_view(tmp_path, tree):
    _, stream = _prepared(tmp_path, _params(tree))
    _, memory = _prepared(tmp_path, _params(tree, loader="memory"), name="memory")
    assert (tmp_path / "memory" / "train.safetensors").is_file()
    for a, b in zip(_epoch(stream), _epoch(memory)):
        assert torch.equal(a[1], b[1])  # the same permutation of the seed
    assert torch.equal(stream.test.head(5), memory.test.head(5))  # the same decoder and view
    assert torch.equal(stream.val.labels, memory.val.labels)


def test_ranks_read_disjoint_shares_of_the_single_process_epoch(tmp_path, tree):
    _, ds = _prepared(tmp_path, _params(tree))
    single = torch.cat([y for _, y in _epoch(ds)])
    ranks = [torch.cat([y for _, y in _epoch(ds, batch_size=2, rank=r, world=2)]) for r in (0, 1)]
    assert torch.equal(torch.stack(ranks, 1).flatten(), single)


@pytest.mark.parametrize("loader", ["stream", "memory"])
def test_pruning_criteria_score_batches_that_mix_classes(tmp_path, tree, loader):
    """The tree lists its train images class by class: its first batch holds one class. The
    batches a method scores on (SNIP, Taylor, refill's activation criteria) are a seeded sample."""
    from structlth.rounds import Context
    from structlth.tickets import method_inputs

    raw = copy.deepcopy(tiny_raw())
    raw["data"].update(_params(tree, loader=loader).model_dump(mode="json"))
    params = parse_params(raw)
    _, ds = _prepared(tmp_path, params.data)
    first = next(iter(eval_batches(ds.train, ds, 4)))
    assert first[1].unique().numel() == 1
    batches = method_inputs(Context(params, ds, torch.device("cpu"))).batches(2)
    assert [x.shape for x, _ in batches] == [(4, 3, 16, 16)] * 2 and torch.cat([y for _, y in batches]).unique().numel() > 1
    again = scoring_batches(ds.train, ds, 4, 2, params.train.seed)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(batches, again))  # the seed fixes them
    other = scoring_batches(ds.train, ds, 4, 2, params.train.seed + 1)
    assert not all(torch.equal(a[1], b[1]) for a, b in zip(batches, other))


def test_random_resized_crop_trains_at_size_and_evaluates_at_the_centre(tmp_path, tree):
    _, ds = _prepared(tmp_path, _params(tree, augment={"crop_padding": 0, "hflip": False, "random_resized_crop": True}))
    assert _epoch(ds)[0][0].shape == (4, 3, 16, 16)
    assert ds.test.head(2).shape == (2, 3, 16, 16)


def test_files_left_out_are_named_and_counted(tmp_path, tree, capsys):
    (tree / "train" / "class000" / "notes.txt").write_text("not an image")
    (tree / "train" / "class001" / "fake.jpg").write_text("not a jpeg either")
    summary, ds = _prepared(tmp_path, _params(tree))
    assert summary["ignored_files"] == 1 and summary["unreadable_files"] == 1 and summary["train_images"] == 24
    err = capsys.readouterr().err
    assert "train/class000/notes.txt" in err and "train/class001/fake.jpg" in err
    assert ds.dropped == {"ignored": ["train/class000/notes.txt"], "unreadable": ["train/class001/fake.jpg"]}


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda t: shutil.rmtree(t / "val" / "class002"), r"val: its classes differ from train/'s: missing class002"),
        (lambda t: (t / "val" / "zebra").mkdir(), r"val: its classes differ from train/'s: extra zebra"),
        (lambda t: [f.unlink() for f in (t / "train" / "class001").iterdir()], r"train/class001: no images in this class folder"),
        (lambda t: shutil.rmtree(t / "val"), r"needs val/ as an ImageFolder"),
    ],
)
def test_a_bad_tree_is_refused_naming_the_folder(tmp_path, tree, damage, message):
    damage(tree)
    with pytest.raises(DataError, match=message):
        prepare_data(_params(tree), tmp_path / "data")
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("workers", [0, 2])
def test_an_image_broken_after_prepare_stops_training_naming_it(tmp_path, tree, workers):
    _, ds = _prepared(tmp_path, _params(tree), workers)
    victim = tree / json.loads((tmp_path / "data" / "index.json").read_text())["splits"]["train"]["paths"][0]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated: a header, no pixels
    with pytest.raises(DataError, match=rf"^{victim}: cannot decode this image .*rerun dvc repro"):
        _epoch(ds)


def test_tiny_imagenet_val_layout_is_read_from_its_annotations(tmp_path, tree):
    val = tree / "val"
    (tmp_path / "images").mkdir()
    lines = []
    for c in sorted(val.iterdir()):
        for f in sorted(c.iterdir()):
            f.rename(tmp_path / "images" / f"{c.name}_{f.name}")
            lines.append(f"{c.name}_{f.name}\t{c.name}\t0\t0\t8\t8")
        c.rmdir()
    (tmp_path / "images").rename(val / "images")
    (val / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    t = scan(tree)
    assert len(t.test) == 9 and sorted({y for _, y in t.test}) == [0, 1, 2] and t.ignored == []
    assert all(p.startswith("val/images/class00" + str(y)) for p, y in t.test)
    (val / "val_annotations.txt").write_text("x.JPEG\tnot_a_class\n")
    with pytest.raises(DataError, match=r"val_annotations.txt:1: .*class of train/"):
        scan(tree)


def test_the_listing_digest_follows_any_file_change(tree):
    before = scan(tree).digest
    assert scan(tree).digest == before
    f = next((tree / "train" / "class000").iterdir())
    os.utime(f, ns=(0, 0))
    assert scan(tree).digest != before


@pytest.mark.parametrize(
    "data, message",
    [
        ({"dataset": "fashion_mnist", "loader": "stream"}, "loader=stream reads image files: fashion_mnist has none"),
        (
            {"loader": "memory", "augment": {"crop_padding": 0, "random_resized_crop": True}},
            "random_resized_crop needs the original images",
        ),
        ({"augment": {"crop_padding": 4, "random_resized_crop": True}}, "two crops: set crop_padding: 0"),
    ],
)
def test_loader_and_crop_params_that_cannot_work_are_refused(tree, data, message):
    with pytest.raises(ParamsError, match=message):
        _params(tree, **data)


def test_the_params_check_refuses_an_image_folder_dataset_without_its_tree(tmp_path):
    raw = copy.deepcopy(tiny_raw())
    raw["data"].update(dataset="imagenet", root=str(tmp_path / "nowhere"), image_size=16, train_subset=None, test_subset=None)
    with pytest.raises(ParamsError, match=r"data.root: no imagenet under .*nowhere'. It must hold train/<class>/<images> and val/<class>"):
        check_runnable(parse_params(raw))


def test_each_sample_draws_its_own_crop_from_its_seed(tmp_path, tree):
    _, ds = _prepared(tmp_path, _params(tree, augment={"crop_padding": 0, "hflip": True, "random_resized_crop": True}))
    s = ds.train
    files = ImageFiles(s.root, s.paths, s.labels, train_transform(s.size, s.aug, s.fill))
    views = [files[(0, sample_seed(3, k))][0] for k in range(6)]
    assert torch.equal(views[0], files[(0, sample_seed(3, 0))][0])  # a seed fixes the view
    assert len({tuple(v.flatten().tolist()) for v in views}) > 1  # seeds vary it
