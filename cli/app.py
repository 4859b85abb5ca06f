"""The ``dreamcloth`` command: one Typer app, one module per command group."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from .batch_cmd import fit_batch
from .errors import report_errors
from .fit_cmd import fit, predict
from .morph_cmd import morph_command
from .prior_cmd import prior_app
from .render_cmd import app as render_app
from .scene_cmd import scene_app
from .simulate_cmd import simulate

app = typer.Typer(
    name="dreamcloth",
    help="Recover the physical material of cloth and soft solids from video.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@app.callback()
def _root() -> None:
    """Recover the physical material of cloth and soft solids from video."""


app.add_typer(render_app, name="render")
app.add_typer(prior_app, name="prior")
app.command()(simulate)
app.command()(fit)
app.command()(predict)
app.command("fit-batch")(fit_batch)
app.add_typer(scene_app, name="scene")
app.command("morph")(morph_command)


@app.command()
@report_errors
def bench(
    section: Annotated[
        Optional[list[str]], typer.Option("--section", "-s", help="Run only these sections (repeatable).")
    ] = None,
    quick: Annotated[bool, typer.Option(help="Small sizes: a smoke run in seconds, not a measurement.")] = False,
    json_out: Annotated[Path, typer.Option("--json", help="Where to write the JSON report.")] = Path(
        "bench.json"
    ),
) -> None:
    """Speed and accuracy report: a table on the terminal and a JSON file."""
    from rich.console import Console
    from rich.table import Table

    from dreamcloth.benchmarks.common import write_json
    from dreamcloth.benchmarks.suite import SECTIONS, run_section

    names = section or list(SECTIONS)
    console = Console()
    rows = []
    for name in names:
        console.rule(f"[bold]{name}")
        rows.extend(run_section(name, quick=quick))
    table = Table(title="dreamcloth bench")
    for col in ("section", "measure", "value", "unit", "vs peer", "note"):
        table.add_column(col)
    for m in rows:
        peer = f"{m.ratio:.2f}x {m.ratio_to}" if m.ratio is not None else ""
        table.add_row(m.section, m.name, f"{m.value:.4g}", m.unit, peer, m.note)
    console.print(table)
    write_json(rows, json_out)
    console.print(f"wrote {json_out}")


def main() -> None:
    """Console-script entry point (environment defaults are set in ``dreamcloth.cli.__init__``)."""
    app()


if __name__ == "__main__":
    main()
