"""structlth: structurally sparse lottery tickets with verified speedups.

The names a library user needs, without the pipeline (loaded on first use, so `import structlth`
stays light):

    import structlth as sl
    masks = sl.magnitude_prune(weights, sl.ones_masks(model), 0.5)      # unstructured IMP step
    ticket = sl.refill_masks(masks, sl.weight_scores("magnitude", weights, masks), 0.0)
    slim = sl.slim_model(model.eval(), ticket, in_channels=3)          # a physically smaller net
"""

from importlib import import_module

__version__ = "0.2.0"

_FACE = {
    "load_params": "structlth.config",
    "build_model": "structlth.models",
    "ones_masks": "structlth.masks",
    "drop_untrainable": "structlth.masks",
    "mask_stats": "structlth.masks",
    "magnitude_prune": "structlth.pruning",
    "channel_prune": "structlth.pruning",
    "refill": "structlth.pruning",
    "regroup": "structlth.pruning",
    "regroup_layers": "structlth.pruning",
    "refill_masks": "structlth.pruning.kinds.refill",
    "weight_scores": "structlth.pruning.kinds.refill",
    "slim_model": "structlth.speedup.slim",
    "fast_models": "structlth.speedup.choice",
    "masked_reference": "structlth.speedup.engines",
    "export_slim": "structlth.export",
    "load_slim": "structlth.export",
    "export_onnx": "structlth.export",
    "export_ticket": "structlth.export",
    "paired": "structlth.stats",
    "accuracy_interval": "structlth.stats",
}
__all__ = sorted(_FACE)


def lazy_names(package: str, names: dict[str, str]):
    """A package's module-level __getattr__ that imports the module names[attr] names only when
    attr is first asked for: the package's face costs nothing until used, and a static import
    closure (structlth.codedeps) never follows it."""

    def getattr_(name: str):
        if name in names:
            return getattr(import_module(names[name]), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return getattr_


__getattr__ = lazy_names(__name__, _FACE)
