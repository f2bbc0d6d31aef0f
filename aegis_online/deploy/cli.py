"""``aegis-online chart check`` and ``aegis-online chart schema``: the Helm chart's offline checks, from the shell.

``check`` runs every check of ``chart_check`` on each values file (default: the examples, deploy/values-*.yaml)
and exits 1 when any file has a problem, printing each problem on its own line: CI and a user about to run
``helm install`` get the same verdict. ``schema`` rewrites values.schema.json's generated part.
"""

from __future__ import annotations

from pathlib import Path

import typer

chart_app = typer.Typer(help="The Helm chart (helm/aegis-online): offline checks and its generated schema.")


@chart_app.command("check")
def chart_check_command(
    values: list[Path] | None = typer.Argument(
        None, exists=True, dir_okay=False, help="Values files (default: deploy/values-*.yaml)."
    ),
) -> None:
    """helm lint/template, Kubernetes schemas, the RayService and its serveConfigV2, for each values file."""
    from rich.console import Console

    from aegis_online.deploy.chart_check import EXAMPLE_VALUES, ChartCheckError, check_chart

    console = Console(highlight=False, soft_wrap=True)
    failed = 0
    for values_file in values or EXAMPLE_VALUES:
        try:
            report = check_chart(values_file)
        except ChartCheckError as error:
            console.print(f"[red]aegis-online chart check: {error}[/red]")
            raise typer.Exit(code=2) from None
        if report.ok:
            kinds = sorted({m.get("kind", "?") for m in report.manifests})
            console.print(f"[green]ok[/green] {values_file}: {len(report.manifests)} manifests ({', '.join(kinds)})")
            continue
        failed += 1
        console.print(f"[red]FAILED[/red] {values_file}:")
        for problem in report.problems:
            console.print(f"  - {problem}", markup=False)
    raise typer.Exit(code=1 if failed else 0)


@chart_app.command("schema")
def chart_schema_command() -> None:
    """Regenerate the `serve` part of values.schema.json from the service configuration's model."""
    from aegis_online.deploy.values_schema import main

    raise typer.Exit(code=main())
