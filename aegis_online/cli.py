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


def _register_outer_commands() -> None:
    """Commands whose code lives with their subsystem (the CLI stays a thin list of entry points)."""
    from aegis_online.deploy.cli import chart_app
    from aegis_online.experts.cli import experts_app
    from aegis_online.feedback.cli import feedback_worker_command
    from aegis_online.rayserve.cli import serve_command, serve_demo_command
    from aegis_online.simulate.cli import eval_command, replay_command, simulate_command

    app.command("serve")(serve_command)
    app.command("serve-demo")(serve_demo_command)

    app.command("simulate")(simulate_command)
    app.command("replay")(replay_command)
    app.command("eval")(eval_command)
    app.command("feedback-worker")(feedback_worker_command)
    app.add_typer(chart_app, name="chart")
    app.add_typer(experts_app, name="experts")


_register_outer_commands()


@app.command()
def demo(
    out: Path = typer.Option(Path("demo-out"), help="Folder for the plot."),
    steps: int = typer.Option(3000, min=100, help="Requests in the simulated stream."),
    seed: int = typer.Option(7, help="Random seed (the run is reproducible)."),
) -> None:
    """Run a drifting stream through the embedded engine with delayed feedback; print how the weights move."""
    from aegis_online.demos.drift import main

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
