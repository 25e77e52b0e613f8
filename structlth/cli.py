"""The `structlth` command: validate params, inspect a ticket, export a slim model."""

from __future__ import annotations

import re
from enum import StrEnum
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
def main(
    _version_flag: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version and exit"),
) -> None:
    """structlth: structurally sparse lottery tickets with verified speedups."""


@app.command()
def validate(params: Path = typer.Argument(Path("params.yaml"))) -> None:
    """Check params.yaml in full, and what it asks of this machine (the data folder, CUDA, layer
    names): the checks the pipeline's first stage runs. Exit 2 with one message naming the key."""
    from structlth.checks import check_runnable

    with user_errors():
        p = load_params(params)
        check_runnable(p)
    typer.echo(f"{params}: ok ({p.model.arch} on {p.data.dataset}, rounds {', '.join(p.round_ids())}, tickets {', '.join(p.tickets)})")


def composed_text(variant: Path) -> str:
    """A variant of params (`base:` + what differs, structlth.config.compose) as one complete,
    validated params file, headed by where it came from."""
    import yaml

    from structlth.config import compose, parse_params

    raw = compose(variant)
    parse_params(raw, str(variant))
    return f"# Composed by `structlth compose {variant}`: edit that file, not this one.\n" + yaml.safe_dump(raw, sort_keys=False)


@app.command("compose")
def compose_params(
    variant: Path = typer.Argument(..., help="a params file, e.g. configs/default_3seeds.yaml (base: + what differs)"),
    out: Path = typer.Option(Path("params.yaml"), "--out", help="where the complete params go (DVC reads params.yaml)"),
) -> None:
    """Write a variant composed on its base as a complete params file (DVC reads params.yaml
    whole). Then `dvc exp run`, or `structlth repro`; `git checkout params.yaml` returns to the
    default."""
    with user_errors():
        text = composed_text(variant)
    out.write_text(text)
    typer.echo(f"{variant} -> {out}")


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


def _natural(name: str) -> list:
    """Sort key that orders a module path's numbers as numbers (the model's own order)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


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
    for name, s in sorted(layer_stats(masks).items(), key=lambda kv: _natural(kv[0])):  # features.3 before features.10
        table.add_row(name, "x".join(map(str, masks[name].shape)), f"{s['density']:.3f}", f"{s['channel_density']:.3f}")
    Console().print(table)


class ExportFormat(StrEnum):
    safetensors = "safetensors"
    onnx = "onnx"


@app.command()
def export(
    ticket_dir: Path = typer.Argument(..., help="e.g. artifacts/refill/round2"),
    out: Path = typer.Option(..., "--out", help="folder for the model + architecture.json"),
    fmt: ExportFormat = typer.Option(
        ExportFormat.safetensors,
        "--format",
        help="safetensors: the slim net of a channel-wise ticket; onnx: the fast model of any structured ticket",
    ),
    params: Path = typer.Option(Path("params.yaml"), "--params"),
    data: Path = typer.Option(Path("artifacts/data"), "--data"),
) -> None:
    """Export a structured ticket: a physically slim model (safetensors + JSON) or ONNX."""
    from structlth.export import export_ticket

    with user_errors():
        typer.echo(export_ticket(load_params(params), ticket_dir, out, fmt.value, data))


@app.command("eval")
def evaluate(
    export_dir: Path = typer.Argument(..., help="a folder written by `structlth export` (safetensors or ONNX)"),
    data: Path = typer.Option(Path("artifacts/data"), help="the prepared dataset (the prepare stage's output)"),
) -> None:
    """Accuracy of an exported ticket on the prepared test set, with its 95% interval."""
    from structlth.export import evaluate_export

    with user_errors():
        r = evaluate_export(export_dir, data)
    typer.echo(
        f"{export_dir} ({r['format']}): test accuracy {r['test_acc']:.2%}"
        f" ({r['correct']} / {r['images']}; 95% CI {r['low']:.2%} to {r['high']:.2%})"
    )


@app.command()
def repro(targets: list[str] = typer.Argument(None, help="stages to reproduce (default: all)")) -> None:
    """`dvc repro` that prints "stage k of N" and an estimate for the whole run as it goes."""
    from structlth.repro import run

    with user_errors():
        code = run(targets or [])
    raise typer.Exit(code)


@app.command()
def quick(
    params: Path = typer.Option(Path("configs/quick.yaml"), help="the smoke run's params"),
    out: Path = typer.Option(Path(".quick"), help="scratch DVC repo the run lives in (git-ignored)"),
) -> None:
    """The whole pipeline on a small subset in a scratch repo (minutes on 2 cores): checks that
    everything runs here, leaving this workspace untouched. Its report says it is a smoke run."""
    from structlth.repro import run, scratch_repo

    with user_errors():
        code = run([], scratch_repo(out, composed_text(params)))
    if code == 0:
        typer.echo(f"smoke run done: {out / 'reports' / 'report.md'}")
    raise typer.Exit(code)


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
