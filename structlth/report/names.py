"""Each method of a run in words, as the report names it once: what `tp_l1` or `regroup_disjoint`
is, read from its params entry."""

from __future__ import annotations

from structlth.config import Params, RefillParams, RegroupParams, TorchPruningParams

SOURCE_LABELS = {"omp": "one-shot magnitude (OMP)", "random": "random (RP)", "snip": "SNIP", "synflow": "SynFlow"}
IMPORTANCE_WORDS = {
    "l1": "group L1",
    "filter_l1": "filter L1 (Li et al.)",
    "bn_scale": "BN scales",
    "taylor": "Taylor (|weight × gradient|)",
}
INIT_WORDS = {"original": "retrained from the original initialisation", "random": "retrained from a fresh random initialisation"}


def ticket_words(spec: RefillParams | RegroupParams | TorchPruningParams) -> str:
    """One ticket or baseline entry in words."""
    if isinstance(spec, TorchPruningParams):
        start = "fine-tuned" if spec.start == "finetune" else "rewound and retrained"
        slim = ", its dense net trained with network slimming's L1 penalty on BN scales" if spec.sparsity_reg else ""
        return f"Torch-Pruning, {IMPORTANCE_WORDS[spec.importance]}, at {spec.match}'s FLOPs, {start}{slim}"
    if isinstance(spec, RefillParams):
        plus = f", plus {spec.refill_rate:.0%} of the rest (the paper's refill+)" if spec.refill_rate else " (the paper's refill)"
        words = "whole channels refilled from the mask" + plus
        if spec.readers == "keep":
            words += ", keeping the BN of dropped channels and the weights that read them (the paper's code; runs unstructured)"
    elif spec.inputs == "disjoint":
        words = "dense blocks regrouped from the mask, splitting the input channels (not in the paper)"
    else:
        words = "dense blocks regrouped from the mask (the paper's regroup)"
    if spec.source != "imp":
        words += f", from a {SOURCE_LABELS[spec.source]} mask at the IMP round's density"
    return words + (f", {INIT_WORDS[spec.init]}" if spec.init != "rewind" else "")


def method_names(p: Params) -> dict[str, str]:
    """Method -> its description, in the run's method order."""
    fixed = {
        "imp": "IMP: unstructured magnitude pruning, the source of every ticket",
        "imp_channel": "naive channel pruning: a chain that prunes whole channels by magnitude",
    }
    out = {}
    for m in p.methods:
        if m in fixed:
            out[m] = fixed[m]
        elif m in p.group_chains:
            out[m] = f"group-aware IMP: every round post-processed as {p.group_chains[m].ticket} before rewinding"
        else:
            out[m] = ticket_words(p.ticket_spec(m))
    return out
