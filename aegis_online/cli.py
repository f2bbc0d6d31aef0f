"""The ``aegis-online`` command line. Thin: each command parses its options and calls into the package."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="aegis-online: an online-learning ensemble of content-safety experts.", no_args_is_help=True)
policy_app = typer.Typer(help="Tenant policies.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")
console = Console()


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), help="Folder for the plot."),
    steps: int = typer.Option(3000, min=100, help="Requests in the simulated stream."),
    seed: int = typer.Option(7, help="Random seed (the run is reproducible)."),
) -> None:
    """Run a drifting stream through the embedded engine with delayed feedback; print how the weights move."""
    from aegis_online.simulate.demo import main

    main(out, steps=steps, seed=seed)


@policy_app.command("check")
def policy_check(path: Path = typer.Argument(..., exists=True, dir_okay=False, help="Policy YAML or JSON.")) -> None:
    """Validate a tenant policy file and print its thresholds at each strictness level."""
    from aegis_online.policy import STRICTNESS_LEVELS, TenantPolicy

    try:
        policy = TenantPolicy.model_validate(yaml.safe_load(path.read_text()))
    except ValidationError as error:
        for e in error.errors():
            field = ".".join(str(p) for p in e["loc"]) or "(policy)"
            console.print(f"[red]{path}: {field}: {e['msg']}[/red]")
        raise typer.Exit(code=1) from None
    table = Table(title=f"policy of tenant {policy.tenant!r}")
    table.add_column("category")
    for level in STRICTNESS_LEVELS:
        table.add_column(level, justify="right")
    table.add_column("action")
    for cat in policy.category_set():
        row = [f"{policy.threshold_for(cat.id, level):.3f}" for level in STRICTNESS_LEVELS]
        table.add_row(f"{cat.id} {cat.slug}", *row, policy.action_for(cat.id))
    console.print(table)


if __name__ == "__main__":
    app()
