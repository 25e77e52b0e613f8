"""The `structlth` command: validate params, inspect a ticket, export a slim model."""

from __future__ import annotations

from pathlib import Path

import typer

from structlth.config import load_params
from structlth.errors import user_errors

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def validate(params: Path = typer.Argument(Path("params.yaml"))) -> None:
    """Check params.yaml in full; exit 2 with one message naming each bad key."""
    with user_errors():
        p = load_params(params)
    typer.echo(f"{params}: ok ({p.model.arch} on {p.data.dataset}, rounds {', '.join(p.round_ids())}, tickets {', '.join(p.tickets)})")


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


@app.command()
def export(
    ticket_dir: Path = typer.Argument(..., help="e.g. artifacts/refill/round2"),
    out: Path = typer.Option(..., "--out", help="folder for model.safetensors + architecture.json"),
    params: Path = typer.Option(Path("params.yaml"), "--params"),
    data: Path = typer.Option(Path("artifacts/data"), "--data"),
) -> None:
    """Export a channel-wise ticket as a physically slim model (safetensors + JSON)."""
    import torch

    from structlth.export import export_slim
    from structlth.pipeline import Context, load_round
    from structlth.data import load_dataset

    with user_errors():
        p = load_params(params)
        ds = load_dataset(data)
        ctx = Context(p, ds, torch.device("cpu"))
        model = ctx.model()
        state, masks = load_round(ctx, ticket_dir, model)
        model.load_state_dict(state)
        arch = {**ctx.model_meta(), "small_input_stem": p.model.small_input_stem, "mean": ds.mean, "std": ds.std}
        slim = export_slim(model, masks, arch, out)
    n_slim, n_dense = sum(t.numel() for t in slim.parameters()), sum(t.numel() for t in model.parameters())
    typer.echo(f"exported {ticket_dir} -> {out}: {n_slim} parameters ({n_slim / n_dense:.1%} of dense)")


if __name__ == "__main__":
    app()
