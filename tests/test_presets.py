"""The paper's presets in configs/: valid, in sync with their generator, and their models build."""

from __future__ import annotations

import pytest
import torch
import yaml

from structlth.config import parse_params
from structlth.models import build_model
from structlth.presets import DATASET_SHAPES, PRESETS

from conftest import ROOT

BASE = yaml.safe_load((ROOT / "params.yaml").read_text())


def test_configs_folder_holds_exactly_the_presets():
    assert sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")) == sorted(PRESETS)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_validates_matches_its_generator_and_builds_its_model(name):
    raw = yaml.safe_load((ROOT / "configs" / f"{name}.yaml").read_text())
    assert raw == PRESETS[name].params(BASE), "configs/ is stale: run `structlth presets configs`"
    p = parse_params(raw)
    classes, channels, side = DATASET_SHAPES[p.data.dataset]
    model = build_model(p.model.arch, classes, channels, p.model.width, p.model.small_input_stem).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, channels, side, side))
    assert out.shape == (1, classes)
    assert p.train.rewind_epoch < p.train.epochs and len(p.round_ids()) >= 5
