"""Pruning methods: global magnitude (IMP), channel L1 (imp_channel), refill, regroup."""

from structlth.pruning.magnitude import channel_prune, magnitude_prune
from structlth.pruning.refill import refill, refill_count
from structlth.pruning.regroup import parts_for, regroup, regroup_layers

__all__ = ["channel_prune", "magnitude_prune", "parts_for", "refill", "refill_count", "regroup", "regroup_layers"]
