"""Verified speed measurements of tickets against the dense network.

For each ticket the fast model is built by its engine, checked against the masked dense
reference on a real test batch (relative max error <= atol, else VerificationError), then
timed against the dense net of the same architecture, alternating, median of `repeats` runs
after `warmup`, at each batch size.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from structlth.errors import VerificationError
from structlth.speedup.engines import engine_candidates, masked_reference, swap_convs
from structlth.speedup.slim import slim_model

CHANNEL_KINDS = ("refill", "imp_channel")
GROUP_KINDS = ("regroup",)


@dataclass(frozen=True)
class Timing:
    t_dense_ms: float
    t_ticket_ms: float

    @property
    def saving(self) -> float:
        return 1 - self.t_ticket_ms / self.t_dense_ms


@torch.inference_mode()
def time_pair(dense: Callable, fast: Callable, x: torch.Tensor, repeats: int, warmup: int, x_fast: torch.Tensor | None = None) -> Timing:
    """Median ms of dense(x) and fast(x_fast or x), run alternately in this process."""
    xf = x if x_fast is None else x_fast
    for _ in range(warmup):
        dense(x)
        fast(xf)
    td, tf = [], []
    for _ in range(repeats):
        for fn, acc, inp in ((dense, td, x), (fast, tf, xf)):
            t0 = time.perf_counter()
            fn(inp)
            acc.append(time.perf_counter() - t0)
    med = lambda v: sorted(v)[len(v) // 2] * 1e3  # noqa: E731
    return Timing(med(td), med(tf))


@torch.inference_mode()
def verify(reference: nn.Module, fast: nn.Module, x: torch.Tensor, atol: float, what: str) -> float:
    """Max |fast(x) - reference(x)|; VerificationError above atol x max |reference(x)|."""
    ref, out = reference(x), fast(x)
    if out.shape != ref.shape:
        raise VerificationError(f"{what}: output shape {tuple(out.shape)} != reference {tuple(ref.shape)}")
    err, scale = float((out - ref).abs().max()), float(ref.abs().max().clamp_min(1e-12))
    if not err <= atol * scale:
        raise VerificationError(
            f"{what}: fast path differs from the masked model by {err:.3g}"
            f" (> bench.atol {atol} x output scale {scale:.3g})"
        )
    return err


@torch.inference_mode()
def conv_inputs(model: nn.Module, x: torch.Tensor, names: set[str] | None = None) -> dict[str, torch.Tensor]:
    """Input tensor of every module named in `names` (default: every Conv2d) for input x."""
    wanted = {n: m for n, m in model.named_modules() if (n in names if names is not None else isinstance(m, nn.Conv2d))}
    seen: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_mod, inp, _out) -> None:  # must return None, or it replaces the output
            seen.setdefault(name, inp[0])

        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in wanted.items()]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return seen


def choose_engines(reference: nn.Module, masks: Mapping[str, torch.Tensor], x: torch.Tensor, repeats: int, warmup: int) -> dict[str, str]:
    """Per masked conv, the fastest engine on its real input (the dense conv when nothing wins)."""
    inputs = conv_inputs(reference, x)
    modules = dict(reference.named_modules())
    choice = {}
    for pname, mask in masks.items():
        name = pname.removesuffix(".weight")
        conv = modules[name]
        best, best_t = "dense", None
        for engine in engine_candidates(mask):
            if engine == "dense":
                continue
            layer = swap_convs(nn.Sequential(conv), {"0.weight": mask}, {"0": engine})
            t = time_pair(conv, layer, inputs[name], repeats, warmup)
            if t.t_ticket_ms < t.t_dense_ms and (best_t is None or t.t_ticket_ms < best_t):
                best, best_t = engine, t.t_ticket_ms
        choice[name] = best
    return choice


def fast_models(kind: str, model: nn.Module, masks: Mapping[str, torch.Tensor], in_channels: int, x: torch.Tensor, repeats: int, warmup: int) -> dict[str, nn.Module]:
    """engine name -> fast model for a ticket of this kind (model carries its trained weights)."""
    ref = masked_reference(model, masks, in_channels)
    if kind in CHANNEL_KINDS:
        return {"slim": slim_model(model, masks, in_channels)}
    if kind in GROUP_KINDS:
        slim = slim_model(model, masks, in_channels)
        slim_masks = _slim_masks(model, masks, in_channels)
        choice = choose_engines(slim, slim_masks, x, repeats, warmup)
        return {"slim+blocks": swap_convs(slim, slim_masks, choice), "subconv": swap_convs(ref, masks, {n.removesuffix(".weight"): "subconv" for n in masks})}
    return {"masked_dense": ref, "csr": swap_convs(ref, masks, {n.removesuffix(".weight"): "csr" for n in masks})}


def _slim_masks(model: nn.Module, masks: Mapping[str, torch.Tensor], in_channels: int) -> dict[str, torch.Tensor]:
    """The masks of the slim model's convs: slim a copy whose weights are the masks themselves."""
    carrier = copy.deepcopy(model).cpu()
    params = dict(carrier.named_parameters())
    with torch.no_grad():
        for name, m in masks.items():
            params[name].copy_(m.float())
    slim = dict(slim_model(carrier, masks, in_channels).named_modules())
    return {n: slim[n.removesuffix(".weight")].weight.detach() != 0 for n in masks if isinstance(slim.get(n.removesuffix(".weight")), nn.Conv2d) and slim[n.removesuffix(".weight")].groups == 1}


def layer_rows(dense: nn.Module, fast: nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> list[dict]:
    """Per conv layer (BN, ReLU excluded): dense conv on its dense input vs the fast model's
    module of the same name on the fast model's input."""
    d_in = conv_inputs(dense, x)
    f_in = conv_inputs(fast, x, set(d_in))
    d_mods, f_mods = dict(dense.named_modules()), dict(fast.named_modules())
    rows = []
    for name, inp in d_in.items():
        if name not in f_in:
            continue
        t = time_pair(d_mods[name], f_mods[name], inp, repeats, warmup, f_in[name])
        rows.append({"layer": name, "t_dense_ms": t.t_dense_ms, "t_ticket_ms": t.t_ticket_ms, "time_saving": t.saving, "engine": type(f_mods[name]).__name__})
    return rows


def ticket_kind(method: str, params) -> str:
    """imp -> unstructured; imp_channel -> channel; tickets.<name> -> its kind."""
    if method in ("imp", "imp_channel"):
        return method
    return params.tickets[method].kind


def bench_ticket(method: str, kind: str, model: nn.Module, masks: Mapping[str, torch.Tensor], metrics: dict, test_x: torch.Tensor, bench, *, layers: bool) -> tuple[list[dict], list[dict]]:
    """Rows for bench.csv (every engine x batch size) and bench_layers.csv (largest batch).

    model: the ticket's architecture with its trained weights; test_x: normalised test images
    [N, C, H, W], N >= max(batch sizes); bench: BenchParams.
    """
    in_ch = test_x.shape[1]
    model = model.cpu().eval()
    ref = masked_reference(model, masks, in_ch)
    rows, layer_out = [], []
    dense_params = sum(p.numel() for p in model.parameters())
    for b in bench.batch_sizes:
        x = test_x[:b]
        for engine, fast in fast_models(kind, model, masks, in_ch, x, max(3, bench.repeats // 3), 1).items():
            err = verify(ref, fast, test_x[: max(bench.batch_sizes)], bench.atol, f"{method} {engine}")
            t = time_pair(model, fast, x, bench.repeats, bench.warmup)
            physical = sum(p.numel() for p in fast.parameters()) if engine == "slim" else metrics["params_kept"]
            rows.append({
                "method": method, "engine": engine, "batch": b, "threads": torch.get_num_threads(),
                "t_dense_ms": t.t_dense_ms, "t_ticket_ms": t.t_ticket_ms, "time_saving": t.saving,
                "flops_saving": 1 - metrics["flops"] / metrics["flops_dense"],
                "params_saving": 1 - physical / dense_params, "max_abs_err": err,
                "sparsity": metrics["sparsity"], "test_acc": metrics["test_acc"],
            })
            if layers and b == max(bench.batch_sizes) and engine in ("slim", "slim+blocks", "csr"):
                for r in layer_rows(model, fast, x, bench.repeats, bench.warmup):
                    layer_out.append({"method": method, "batch": b, **r})
    return rows, layer_out
