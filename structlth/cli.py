"""The `structlth` command: validate params, inspect a ticket, export a slim model."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from structlth.config import load_params
from structlth.errors import user_errors

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"structlth {version('structlth')}")
        raise typer.Exit()


@app.callback()
def main(_version_flag: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit")) -> None:
    """structlth: structurally sparse lottery tickets with verified speedups."""


@app.command()
def validate(params: Path = typer.Argument(Path("params.yaml"))) -> None:
    """Check params.yaml in full; exit 2 with one message naming each bad key."""
    with user_errors():
        p = load_params(params)
    typer.echo(f"{params}: ok ({p.model.arch} on {p.data.dataset}, rounds {', '.join(p.round_ids())}, tickets {', '.join(p.tickets)})")


@app.command()
def verify(lock: Path = typer.Argument(Path("dvc.lock"))) -> None:
    """Re-hash every pipeline output against dvc.lock; exit 1 naming each missing or altered file."""
    from structlth.verify import verify_outputs

    with user_errors():
        n, bad = verify_outputs(lock)
    for line in bad:
        typer.echo(line, err=True)
    typer.echo(f"{lock}: {n - len(bad)} of {n} outputs match")
    if bad:
        raise typer.Exit(1)


@app.command()
def inspect(round_dir: Path) -> None:
    """Print a round's or ticket's sparsity per layer."""
    from rich.console import Console
    from rich.table import Table

    from structlth.artifacts import load_tensors
    from structlth.masks import density, layer_stats

    with user_errors():
        masks, meta = load_tensors(round_dir / "mask.safetensors")
    table = Table(title=f"{round_dir} ({meta.get('arch')}, {meta.get('kind')}): density {density(masks):.4f}")
    for col in ("layer", "shape", "density", "channel density"):
        table.add_column(col)
    for name, s in layer_stats(masks).items():
        table.add_row(name, "x".join(map(str, masks[name].shape)), f"{s['density']:.3f}", f"{s['channel_density']:.3f}")
    Console().print(table)


class ExportFormat(str, Enum):
    safetensors = "safetensors"
    onnx = "onnx"


@app.command()
def export(
    ticket_dir: Path = typer.Argument(..., help="e.g. artifacts/refill/round2"),
    out: Path = typer.Option(..., "--out", help="folder for the model + architecture.json"),
    fmt: ExportFormat = typer.Option(ExportFormat.safetensors, "--format", help="safetensors: the slim net of a channel-wise ticket; onnx: the fast model of any structured ticket"),
    params: Path = typer.Option(Path("params.yaml"), "--params"),
    data: Path = typer.Option(Path("artifacts/data"), "--data"),
) -> None:
    """Export a structured ticket: a physically slim model (safetensors + JSON) or ONNX."""
    import torch

    from structlth.artifacts import load_tensors
    from structlth.data import load_dataset, normalize
    from structlth.export import export_onnx, export_slim
    from structlth.pipeline import Context, load_round
    from structlth.speedup.bench import ticket_kind

    with user_errors():
        p = load_params(params)
        ds = load_dataset(data)
        ctx = Context(p, ds, torch.device("cpu"))
        model = ctx.model()
        state, masks = load_round(ctx, ticket_dir, model, expect_round=False)  # a moved or copied ticket folder exports too
        model.load_state_dict(state)
        arch = {**ctx.model_meta(), "small_input_stem": p.model.small_input_stem, "mean": ds.mean, "std": ds.std}
        n_dense = sum(t.numel() for t in model.parameters())
        if fmt is ExportFormat.onnx:
            method = load_tensors(ticket_dir / "mask.safetensors")[1].get("kind", "")
            kind = ticket_kind(method, p) if method in p.methods else method
            images = normalize(ds.test.head(max(p.bench.batch_sizes)), ds.mean, ds.std)
            engine, ops = export_onnx(kind, model, masks, arch, images, out, p.bench.atol)
            typer.echo(f"exported {ticket_dir} -> {out / 'model.onnx'}: {kind} ticket as {engine} ({', '.join(ops)}), verified in ONNX Runtime")
            return
        slim = export_slim(model, masks, arch, out)
    n_slim = sum(t.numel() for t in slim.parameters())
    typer.echo(f"exported {ticket_dir} -> {out}: {n_slim} parameters ({n_slim / n_dense:.1%} of dense)")


@app.command()
def presets(out: Path = typer.Argument(Path("configs"), help="folder for <name>.yaml")) -> None:
    """Write the paper's settings as complete params files, one per (dataset, model)."""
    import yaml

    from structlth.config import parse_params
    from structlth.presets import PRESETS

    with user_errors():
        out.mkdir(parents=True, exist_ok=True)
        for name, preset in PRESETS.items():
            raw = preset.params()
            parse_params(raw, name)  # a preset must be valid itself
            text = f"# {name}: the paper's setting (structlth.presets); generated by `structlth presets`\n"
            text += yaml.safe_dump(raw, sort_keys=False)
            (out / f"{name}.yaml").write_text(text)
            typer.echo(out / f"{name}.yaml")


if __name__ == "__main__":
    app()
