"""Deployable tickets: a slim model as safetensors weights + architecture JSON (and its
loader), or any structured ticket's fast model as ONNX.

The safetensors loader needs structlth's model code but neither DVC nor the pipeline:

    from structlth.export import load_slim
    model = load_slim("exported/")   # eval-mode nn.Module; input [B, C, H, W] normalised

The ONNX model needs only onnxruntime (input "input" [B, C, H, W] normalised with the mean and
std in architecture.json, output "logits").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from structlth.artifacts import check_state, load_tensors, read_json, save_tensors, write_bytes, write_json
from structlth.errors import ArtifactError
from structlth.models import build_model
from structlth.speedup.choice import STRUCTURED, Probe, fast_models
from structlth.speedup.engines import ALIGN, masked_reference
from structlth.speedup.slim import kept_channels, slim_model
from structlth.speedup.timing import verify

FORMAT = "structlth-slim-2"  # 2: channels in slim.channel_orders order (1: sorted)
ONNX_FORMAT = "structlth-onnx-1"


def check_out_dir(out_dir: Path) -> None:
    """An export folder must be a folder (or not exist yet)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ArtifactError(f"--out {out_dir}: exists and is not a folder")


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

    arch: {"arch", "width", "in_channels", "num_classes", "small_input_stem", "input_shape" ([C, H, W]), "mean", "std"}.
    """
    if not all(is_channel_wise(m) for m in masks.values()):
        raise ArtifactError("export: the ticket is not channel-wise (a row is partly pruned); export refill/imp_channel tickets")
    check_out_dir(Path(out_dir))
    slim = slim_model(model, masks, arch["in_channels"], ALIGN)
    channels = kept_channels(model, masks, arch["in_channels"], ALIGN)
    out_dir = Path(out_dir)
    write_json(out_dir / "architecture.json", {"format": FORMAT, **arch, "channels": channels})
    save_tensors(out_dir / "model.safetensors", slim.state_dict(), {"format": FORMAT})
    return slim


class SlimNet(nn.Module):
    """A loaded slim model. forward: normalised [B, C, H, W] -> logits [B, classes];
    `normalize` turns images in [0, 1] into that input; printing it shows the architecture,
    the input normalisation and the channels each conv kept (not the generated fx code)."""

    def __init__(self, net: nn.Module, spec: Mapping, dense_widths: Mapping[str, int]) -> None:
        super().__init__()
        self.net = net
        self.spec = dict(spec)
        self.dense_widths = dict(dense_widths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """images [B, C, H, W] in [0, 1] -> the model's input."""
        mean = torch.tensor(self.spec["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(self.spec["std"]).view(1, -1, 1, 1)
        return (images - mean) / std

    def __repr__(self) -> str:
        s = self.spec
        n = sum(p.numel() for p in self.parameters())
        lines = [
            f"SlimNet({s['arch']} width {s['width']}, {s['in_channels']} input channels, {s['num_classes']} classes, {n} parameters;",
            f"  input: (images in [0, 1] - mean {s['mean']}) / std {s['std']}  (model.normalize does it)",
            "  channels kept per conv (kept / dense):",
        ]
        lines += [f"    {name}: {len(s['channels'][name])} / {width}" for name, width in self.dense_widths.items()]
        return "\n".join(lines) + "\n)"


def load_slim(out_dir: str | Path) -> SlimNet:
    """Rebuild the slim network from architecture.json and load model.safetensors into it."""
    out_dir = Path(out_dir)
    spec = read_json(out_dir / "architecture.json")
    if spec.get("format") != FORMAT:
        raise ArtifactError(f"{out_dir / 'architecture.json'}: not a {FORMAT} export")
    model = build_model(spec["arch"], spec["num_classes"], spec["in_channels"], spec["width"], spec["small_input_stem"])
    slim = slim_model(model, _row_masks(model, spec["channels"]), spec["in_channels"])
    shapes = {k: tuple(v.shape) for k, v in slim.state_dict().items()}
    state, _ = load_tensors(out_dir / "model.safetensors", expect=shapes, expect_meta={"format": FORMAT})
    check_state(out_dir / "model.safetensors", state)
    slim.load_state_dict(state)
    dense = dict(model.named_parameters())  # in model order
    widths = {n.removesuffix(".weight"): p.shape[0] for n, p in dense.items() if n.removesuffix(".weight") in spec["channels"]}
    return SlimNet(slim, spec, widths).eval()


def export_onnx(
    structure: str,
    model: nn.Module,
    masks: Mapping[str, torch.Tensor],
    arch: Mapping,
    images: torch.Tensor,
    out_dir: str | Path,
    atol: float,
) -> tuple[str, list[str]]:
    """Write model.onnx + architecture.json for a ticket of `structure` (channel or group): the fast model the
    bench times in ONNX Runtime (channel-wise: the slim net; group-wise: the slim net with its
    grouped/sub convs; alignment and engines chosen by timing on `images` in ONNX Runtime on
    this machine), checked by onnx.checker and, in ONNX Runtime, against the masked model on
    `images` (normalised [N, C, H, W]) at `atol` (VerificationError).
    Returns the engine and the ONNX operator types."""
    from structlth.speedup.onnxrt import OrtModel, op_types, to_onnx

    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    if structure not in STRUCTURED:
        raise ArtifactError(
            f"export: {structure} tickets have no fast model; ONNX export takes channel-wise (refill, imp_channel,"
            " Torch-Pruning) and group-wise (regroup) tickets"
        )
    model = model.cpu().eval()
    probe = Probe(images, runtime="onnxruntime", threads=torch.get_num_threads())
    [(engine, fast)] = fast_models(structure, model, masks, arch["in_channels"], probe).items()
    data = to_onnx(fast.to(memory_format=torch.contiguous_format), images)
    verify(
        masked_reference(model, masks, arch["in_channels"]),
        OrtModel(data, torch.get_num_threads()),
        images,
        atol,
        f"ONNX export ({engine})",
    )
    ops = op_types(data)
    write_bytes(out_dir / "model.onnx", data)
    write_json(out_dir / "architecture.json", {"format": ONNX_FORMAT, **arch, "structure": structure, "engine": engine, "onnx_ops": ops})
    return engine, ops


def export_ticket(p, ticket_dir: Path, out: Path, fmt: str = "safetensors", data_dir: Path = Path("artifacts/data")) -> str:
    """Export the round in `ticket_dir` (a pipeline round or ticket folder, moved or copied is
    fine) under params `p` as `fmt`: 'safetensors' (the slim net of a channel-wise ticket:
    model.safetensors + architecture.json) or 'onnx' (the fast model of any structured ticket,
    verified in ONNX Runtime on the prepared test images in data_dir). Returns what was written."""
    from structlth.data import load_dataset, normalize
    from structlth.rounds import Context, load_ticket

    ds = load_dataset(data_dir)
    ctx = Context(p, ds, torch.device("cpu"))
    model, masks = load_ticket(ctx, ticket_dir, expect_round=False)
    arch = {
        **ctx.model_meta(),
        "small_input_stem": p.model.small_input_stem,
        "input_shape": list(ctx.input_shape[1:]),
        "mean": ds.mean,
        "std": ds.std,
    }
    if fmt == "onnx":
        method = load_tensors(ticket_dir / "mask.safetensors")[1].get("kind", "")
        if method not in p.methods:
            raise ArtifactError(f"export: {ticket_dir} holds a {method!r} ticket, not a method of these params ({', '.join(p.methods)})")
        structure = p.structure_of(method)
        images = normalize(ds.test.head(max(p.bench.batch_sizes)), ds.mean, ds.std)
        engine, ops = export_onnx(structure, model, masks, arch, images, out, p.bench.atol)
        return (
            f"exported {ticket_dir} -> {out / 'model.onnx'}: {method}, a {structure}-wise ticket,"
            f" as {engine} ({', '.join(ops)}), verified in ONNX Runtime"
        )
    n_dense = sum(t.numel() for t in model.parameters())
    n_slim = sum(t.numel() for t in export_slim(model, masks, arch, out).parameters())
    return f"exported {ticket_dir} -> {out}: {n_slim} parameters ({n_slim / n_dense:.1%} of dense)"


def load_export(out_dir: str | Path, threads: int = 2):
    """An exported ticket as a callable: normalised float [B, C, H, W] -> logits [B, classes],
    and its architecture.json. Reads either format `export_ticket` writes (a slim safetensors
    net, or model.onnx run in ONNX Runtime)."""
    out_dir = Path(out_dir)
    spec = read_json(out_dir / "architecture.json")
    if spec.get("format") == ONNX_FORMAT:
        from structlth.speedup.onnxrt import OrtModel

        return OrtModel((out_dir / "model.onnx").read_bytes(), threads), spec
    return load_slim(out_dir), spec


@torch.inference_mode()
def evaluate_export(out_dir: str | Path, data_dir: str | Path = "artifacts/data", batch_size: int = 500, threads: int = 2) -> dict:
    """Accuracy of an exported ticket on the prepared test set (`prepare`'s data_dir), with its
    95% Wilson interval: {'format', 'images', 'correct', 'test_acc', 'low', 'high'}. Refuses a
    test set whose image shape or class count differs from the export's."""
    from structlth.data import eval_batches, load_dataset
    from structlth.stats import accuracy_interval

    model, spec = load_export(out_dir, threads)
    ds = load_dataset(data_dir)
    if ds.num_classes != spec["num_classes"] or ds.in_channels != spec["in_channels"]:
        raise ArtifactError(
            f"{out_dir}: exported for {spec['num_classes']} classes x {spec['in_channels']} channels, but {data_dir} holds"
            f" {ds.num_classes} x {ds.in_channels} (prepare the dataset the ticket was trained on)"
        )
    ds = dataclasses.replace(ds, mean=spec["mean"], std=spec["std"])  # the export's normalisation
    hits = []
    for x, y in eval_batches(ds.test, ds, batch_size):
        hits.append(model(x).argmax(1) == y)
    correct = torch.cat(hits)
    low, high = accuracy_interval(correct.numpy())
    n = int(correct.sum())
    return {"format": spec["format"], "images": len(correct), "correct": n, "test_acc": n / len(correct), "low": low, "high": high}
