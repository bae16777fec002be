"""The ``md2bench`` command line: each command parses its options, builds a Config, and makes one package call.

Examples:
    md2bench data synth --out data/synth --preset small --preview
    md2bench train                                   # the synthetic world, synth preset
    md2bench train paper data.path=/data/kitti        # the paper's schedule on KITTI
    md2bench run-ablation experiments/synth-ablation.toml --seeds 3
    md2bench report synth-ablation --out reports/synth-ablation
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    help="md2bench: reproduce, extend and trust the Monodepth2 ablation study.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
data_app = typer.Typer(help="Make and check datasets: the synthetic world, KITTI raw.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


# --------------------------------------------------------------------------------------------- data
@data_app.command("synth")
def data_synth(
    out: Path = typer.Option(..., "--out", help="Folder to write the world into (KITTI raw layout)."),
    preset: str = typer.Option("small", help="tiny (tests/CI), small (default training), default (ablation grid)."),
    sequences: Optional[int] = typer.Option(None, help="Number of drives (overrides the preset)."),
    frames: Optional[int] = typer.Option(None, help="Frames per drive (overrides the preset)."),
    height: Optional[int] = typer.Option(None, help="Image height in pixels (overrides the preset)."),
    width: Optional[int] = typer.Option(None, help="Image width in pixels (overrides the preset)."),
    seed: int = typer.Option(0, help="World seed: the same seed and options give byte-identical files."),
    preview: bool = typer.Option(False, help="Also write preview.png: RGB, coloured depth and motion mask."),
) -> None:
    """Render the procedural driving world with exact depth, poses and motion masks."""
    from md2bench.data import synthetic

    try:
        summary = synthetic.render_world(
            out, preset=preset, sequences=sequences, frames=frames, height=height, width=width, seed=seed,
            preview=preview, progress=True,
        )
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(summary.describe())
