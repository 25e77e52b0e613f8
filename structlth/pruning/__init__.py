"""Pruning methods: global magnitude (IMP), channel L1 (imp_channel), refill, regroup, and the
ticket sources and baseline the registry (structlth.pruning.registry) loads by name.

The public names below load their module on first use, so importing one method (or the
registry) never imports the others: a stage's code closure holds only the methods it runs.
"""

from structlth import lazy_names

_FACE = {
    "magnitude_prune": "structlth.pruning.magnitude",
    "channel_prune": "structlth.pruning.magnitude",
    "refill": "structlth.pruning.kinds.refill",
    "refill_count": "structlth.pruning.kinds.refill",
    "regroup": "structlth.pruning.kinds.regroup",
    "regroup_layers": "structlth.pruning.kinds.regroup",
    "parts_for": "structlth.pruning.kinds.regroup",
}
__all__ = sorted(_FACE)
__getattr__ = lazy_names(__name__, _FACE)
