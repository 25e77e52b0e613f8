"""Deployable slim models: safetensors weights + architecture JSON, and their loader.

The loader needs structlth's model code but neither DVC nor the pipeline:

    from structlth.export import load_slim
    model = load_slim("exported/")   # eval-mode nn.Module; input [B, C, H, W] normalised
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from structlth.artifacts import load_tensors, read_json, save_tensors, write_json
from structlth.errors import ArtifactError
from structlth.models import build_model
from structlth.speedup.engines import ALIGN
from structlth.speedup.slim import kept_channels, slim_model

FORMAT = "structlth-slim-1"


def is_channel_wise(mask: torch.Tensor) -> bool:
    """True when every non-empty row (the mask viewed as [C_out, n]) keeps the same columns:
    whole output channels over the inputs the layer still reads (a channel ticket has zero
    columns on dead input channels: `structlth.masks.drop_untrainable`)."""
    rows = mask.flatten(1).bool()
    live = rows[rows.any(1)]
    return bool((live == live[:1]).all()) if len(live) else True


def _row_masks(model: nn.Module, channels: Mapping[str, list[int]]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    out = {}
    for name, keep in channels.items():
        w = params[f"{name}.weight"]
        rows = torch.zeros(w.shape[0], dtype=torch.bool)
        rows[keep] = True
        out[f"{name}.weight"] = rows.view(-1, 1, 1, 1).expand_as(w).clone()
    return out


def export_slim(model: nn.Module, masks: Mapping[str, torch.Tensor], arch: Mapping, out_dir: str | Path) -> nn.Module:
    """Write model.safetensors + architecture.json for a channel-wise ticket; returns the slim net.

    arch: {"arch", "width", "in_channels", "num_classes", "small_input_stem", "mean", "std"}.
    """
    if not all(is_channel_wise(m) for m in masks.values()):
        raise ArtifactError("export: the ticket is not channel-wise (a row is partly pruned); export refill/imp_channel tickets")
    slim = slim_model(model, masks, arch["in_channels"], ALIGN)
    channels = kept_channels(model, masks, arch["in_channels"], ALIGN)
    out_dir = Path(out_dir)
    write_json(out_dir / "architecture.json", {"format": FORMAT, **arch, "channels": channels})
    save_tensors(out_dir / "model.safetensors", slim.state_dict(), {"format": FORMAT})
    return slim


def load_slim(out_dir: str | Path) -> nn.Module:
    """Rebuild the slim network from architecture.json and load model.safetensors into it."""
    out_dir = Path(out_dir)
    spec = read_json(out_dir / "architecture.json")
    if spec.get("format") != FORMAT:
        raise ArtifactError(f"{out_dir / 'architecture.json'}: not a {FORMAT} export")
    model = build_model(spec["arch"], spec["num_classes"], spec["in_channels"], spec["width"], spec["small_input_stem"])
    slim = slim_model(model, _row_masks(model, spec["channels"]), spec["in_channels"])
    shapes = {k: tuple(v.shape) for k, v in slim.state_dict().items()}
    state, _ = load_tensors(out_dir / "model.safetensors", expect=shapes, expect_meta={"format": FORMAT})
    slim.load_state_dict(state)
    return slim.eval()
