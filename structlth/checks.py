"""What validating params.yaml alone cannot know: the machine, the data folder, layer names.

The pipeline's check_params stage runs `check_runnable` after validation, so a bad edit stops
before any stage deletes its outputs; `structlth validate` runs the same checks.
"""

from __future__ import annotations

from pathlib import Path

from structlth import distributed as dist
from structlth.config import IMAGE_FOLDERS, Params
from structlth.data import has_raw, raw_layout
from structlth.errors import ParamsError
from structlth.masks import ones_masks
from structlth.models import build_model


def check_runnable(params: Params) -> None:
    """Raise a ParamsError naming the key when this machine cannot run `params`: a device it
    lacks, a data.root that holds no dataset (or is a file), a report.mask_layer the model lacks."""
    dist.check_device(params.runtime.device)
    root = Path(params.data.root)
    if root.exists() and not root.is_dir():
        raise ParamsError(f"data.root: {root} is a file, not a folder")
    downloadable = params.data.download and params.data.dataset not in IMAGE_FOLDERS
    if not downloadable and not has_raw(params.data):
        raise ParamsError(
            f"data.root: no {params.data.dataset} under {str(root)!r}. It must hold {raw_layout(params.data)}"
            + ("" if params.data.dataset in IMAGE_FOLDERS else "; or set data.download: true where there is network")
        )
    layer = params.report.mask_layer
    if layer is not None:
        m = params.model
        names = ones_masks(build_model(m.arch, 10, 3, m.width, m.small_input_stem), params.prune.prunable)
        if layer not in names:
            raise ParamsError(f"report.mask_layer: {layer!r} is not a prunable layer of {m.arch}; one of {', '.join(list(names)[:4])}, ...")
