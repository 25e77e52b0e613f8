"""The paper's presets in configs/: equal to the paper's Table 1 (transcribed here), in sync with
their generator, valid, and their models build. Nothing here reads the workspace's params.yaml."""

from __future__ import annotations

import pytest
import torch
import yaml

from helpers import ROOT
from structlth.config import load_params, parse_params
from structlth.models import build_model
from structlth.presets import DATASET_SHAPES, PRESETS

# name: (weight decay, batch size, epochs, milestones, stem 3x3), from the paper's Table 1 and text;
# Tiny-ImageNet / ImageNet batch sizes are ours (not in the transcription), marked None.
PAPER = {
    "cifar10_wrn32_2": (1e-4, 128, 160, [80, 120], True),
    "cifar10_resnet18": (1e-4, 128, 160, [80, 120], True),
    "cifar10_mobilenet_v1": (1e-4, 128, 160, [80, 120], True),
    "cifar10_vgg16": (2e-4, 128, 160, [80, 120], True),
    "cifar100_wrn32_2": (2e-4, 128, 160, [80, 120], True),
    "cifar100_resnet18": (2e-4, 128, 160, [80, 120], True),
    "cifar100_mobilenet_v1": (2e-4, 128, 160, [80, 120], True),
    "cifar100_vgg16": (5e-4, 128, 160, [80, 120], True),
    "tiny_imagenet_resnet50": (5e-4, None, 95, [30, 60], False),
    "tiny_imagenet_resnet50_plus": (5e-4, None, 95, [30, 60], True),
    "imagenet_resnet50": (1e-4, None, 95, [30, 60], False),
    "cifar100_vgg16_plus": (5e-4, 128, 240, [150, 180, 210], True),  # Table A5's (+) schedule
    "cifar100_wrn32_2_plus": (2e-4, 128, 240, [150, 180, 210], True),  # Table A6's
}


def _load(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())


# the default with every ticket kind; with three seeds; with re-initialised tickets; keeping refill's readers; the smoke run
EXTRA = {
    "default_all_tickets",
    "default_3seeds",
    "default_group_aware",
    "default_reinit",
    "default_readers",
    "default_sources",
    "default_align16",
    "quick",
}


def _variant(name: str):
    return load_params(ROOT / "configs" / f"{name}.yaml")


def test_configs_folder_holds_exactly_the_presets_and_the_default_variants():
    assert sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")) == sorted(set(PRESETS) | EXTRA)
    assert set(PAPER) <= set(PRESETS)
    extra = _variant("default_all_tickets")
    assert {"refill", "refill_plus", "regroup", "regroup_paper"} <= set(extra.tickets)
    assert set(extra.baselines) >= {"tp_l1", "tp_l1_rewind", "tp_slimming", "tp_taylor"}
    slimming = extra.baselines["tp_slimming"]
    assert slimming.importance == "bn_scale" and slimming.sparsity_reg > 0  # network slimming trains its own sparse BN
    reinit = _variant("default_reinit")
    assert {t.init for t in reinit.tickets.values()} == {"rewind", "original", "random"}
    assert (reinit.data, reinit.model, reinit.train, reinit.prune) == (extra.data, extra.model, extra.train, extra.prune)
    sources = _variant("default_sources")
    assert {t.source for t in sources.tickets.values()} == {"imp", "omp", "random", "snip", "synflow"}
    assert (sources.data, sources.model, sources.train, sources.prune) == (extra.data, extra.model, extra.train, extra.prune)
    group = _variant("default_group_aware")
    assert {n: g.ticket for n, g in group.group_chains.items()} == {"imp_regroup": "regroup", "imp_refill": "refill"}
    assert group.chains == ["imp", "imp_channel", "imp_regroup", "imp_refill"]
    align16 = _variant("default_align16")
    assert {n: t.channel_align for n, t in align16.tickets.items() if t.kind == "refill"} == {"refill": 8, "refill16": 16}
    assert (align16.data, align16.model, align16.train, align16.prune) == (extra.data, extra.model, extra.train, extra.prune)
    seeds = _variant("default_3seeds")
    assert seeds.seeds == [0, 1, 2]
    assert (seeds.data, seeds.model, seeds.train, seeds.prune) == (
        extra.data,
        extra.model,
        extra.train,
        extra.prune,
    )  # one default, two variants


def _leaves(raw: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in raw.items():
        out |= _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v}
    return out


@pytest.mark.parametrize("name", sorted(EXTRA))
def test_a_default_variant_holds_only_what_differs_from_params_yaml(name):
    """A variant is params.yaml plus its own edits (`base:`), never a copy that can drift from it:
    it composes to valid params, and none of its values restates the base's."""
    raw = _load(name)
    assert raw.pop("base") == "../params.yaml"
    touched = set(raw) | {key.split(".")[0] for key in raw.pop("drop", [])}
    base = _leaves(yaml.safe_load((ROOT / "params.yaml").read_text()))
    restated = {k: v for k, v in _leaves(raw).items() if k in base and base[k] == v}
    assert not restated, f"configs/{name}.yaml restates params.yaml: {restated}"
    composed, default = _variant(name), load_params(ROOT / "params.yaml")
    assert touched and all(getattr(composed, s) == getattr(default, s) for s in type(default).model_fields if s not in touched)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_preset_follows_the_paper(name):
    wd, batch, epochs, milestones, small_stem = PAPER[name]
    p = parse_params(_load(name))
    assert p.train.weight_decay == wd and p.train.epochs == epochs and p.train.milestones == milestones
    assert p.train.rewind_epoch == 8 and p.train.lr == 0.1 and p.train.momentum == 0.9 and p.train.decay_norm
    assert p.prune.rate == 0.2 and p.model.small_input_stem == small_stem
    if batch is not None:
        assert p.data.batch_size == batch
    assert {t.count for t in p.tickets.values() if t.kind == "refill"} == {"ceil"}
    regroups = [t for t in p.tickets.values() if t.kind == "regroup"]
    assert regroups and all(t.column_rule == "density" and t.hypergraph == "column" for t in regroups)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_validates_matches_its_generator_and_builds_its_model(name):
    raw = _load(name)
    assert raw == PRESETS[name].params(), "configs/ is stale: run `structlth presets configs`"
    p = parse_params(raw)
    classes, channels, side = DATASET_SHAPES[p.data.dataset]
    model = build_model(p.model.arch, classes, channels, p.model.width, p.model.small_input_stem).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, channels, side, side))
    assert out.shape == (1, classes)
    assert p.train.rewind_epoch < p.train.epochs and len(p.round_ids()) >= 5
