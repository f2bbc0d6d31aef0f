"""``aegis-online experts list|score|train-head``: the expert catalog from the shell.

``list`` prints the catalog, ``score`` runs catalog experts on one prompt, ``train-head`` fits logistic heads on
MiniLM embeddings of labelled data. The top-level CLI mounts ``experts_app``; ``python -m aegis_online.experts.cli``
runs the same commands without it.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

experts_app = typer.Typer(help="The expert catalog: list, score, train heads.", no_args_is_help=True)
console = Console()


@experts_app.command("list")
def experts_list(
    catalog: Path = typer.Option(None, help="Catalog folder (default: the repository's experts/)."),
) -> None:
    """Show the expert catalog: backend, model or package, cost class, hardware and description of each entry."""
    from aegis_online.catalog import CatalogError, default_catalog_dir, load_catalog

    try:
        specs = load_catalog(catalog or default_catalog_dir())
    except CatalogError as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(code=1) from None
    table = Table(title="expert catalog")
    for column in ("name", "backend", "family", "model / package", "cost", "GPUs", "embedded default", "description"):
        table.add_column(column, no_wrap=column == "name")
    for s in specs:
        default = "yes" if s.runs_on_cpu else ""
        row = [s.name, s.backend, s.family or "", s.model or s.package or "", s.cost, f"{s.hardware.gpus:g}", default]
        table.add_row(*row, s.description)
    console.print(table)


@experts_app.command("score")
def experts_score(
    text: str = typer.Argument(..., help="The user prompt to score."),
    expert: list[str] = typer.Option(None, "--expert", help="Catalog names (default: the CPU experts)."),
    catalog: Path = typer.Option(None, help="Catalog folder (default: the repository's experts/)."),
) -> None:
    """Score one prompt with catalog experts and print each expert's probability per category."""
    import asyncio

    from aegis_online.catalog import CatalogError, cpu_expert_specs, default_catalog_dir, load_catalog
    from aegis_online.experts import ExpertInput, score_with_deadline
    from aegis_online.experts.build import build_expert
    from aegis_online.schemas import Message
    from aegis_online.taxonomy import CANONICAL

    try:
        specs = load_catalog(catalog or default_catalog_dir())
        chosen = [s for s in specs if s.name in expert] if expert else cpu_expert_specs(specs)
        missing = set(expert or ()) - {s.name for s in chosen}
        if missing:
            raise CatalogError(f"--expert: unknown experts {sorted(missing)}")
        experts = [build_expert(s) for s in chosen]
    except (CatalogError, ImportError) as error:
        console.print(f"[red]{error}[/red]")
        raise typer.Exit(code=1) from None
    item = ExpertInput(messages=(Message(role="user", content=text),), check="prompt", categories=CANONICAL)

    async def run() -> list:
        return [(await score_with_deadline(e, [item], deadline_s=120.0))[0] for e in experts]

    table = Table(title="probability per category")
    table.add_column("category")
    for e in experts:
        table.add_column(e.name, justify="right")
    outputs = asyncio.run(run())
    for cat in CANONICAL:
        cells = [f"{o.scores[cat.id]:.3f}" if cat.id in o.scores else "" for o in outputs]
        table.add_row(f"{cat.id} {cat.slug}", *cells)
    console.print(table)
    for o in outputs:
        if o.error:
            console.print(f"[red]{o.expert}: {o.error}[/red]")


@experts_app.command("train-head")
def experts_train_head(
    data: list[Path] = typer.Option(..., "--data", help="Labelled data file; repeat for several."),
    out: Path = typer.Option(..., "--out", dir_okay=False, help="Heads file to write (.npz)."),
    data_format: str | None = typer.Option(
        None,
        "--format",
        help="Format of every --data file: openai_moderation, xstest, simplesafetytests, davidson, harmbench, jsonl, "
        "csv (default: detected from each file name or header).",
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Rows read from each data file."),
    categories: list[str] | None = typer.Option(None, "--category", help="Category id to train (default: all)."),
    text_column: str | None = typer.Option(None, help="Text column of generic jsonl/csv files."),
    label: list[str] | None = typer.Option(None, "--label", help="COLUMN=CATEGORY for generic jsonl/csv files."),
    overall_column: str | None = typer.Option(None, help="Overall safe/unsafe column of generic jsonl/csv files."),
    min_positives: int = typer.Option(10, min=2, help="Fewest positives (and negatives) a category needs."),
    folds: int = typer.Option(5, min=2, help="Cross-validation folds for the reported AUROC."),
) -> None:
    """Train logistic heads on MiniLM embeddings of labelled data; print per-category AUROC; write the heads."""
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from aegis_online.datasets import detect_format, load
    from aegis_online.experts.cpu import train_heads
    from aegis_online.taxonomy import CANONICAL_IDS, category

    def fail(message: str) -> typer.Exit:
        console.print(f"[red]{escape(message)}[/red]", soft_wrap=True)
        return typer.Exit(code=1)

    options: dict[str, object] = {}
    if text_column or label or overall_column:
        try:
            pairs = [item.split("=", 1) for item in label or []]
            options["label_columns"] = {column: target for column, target in pairs}
        except ValueError:
            raise fail(f"--label takes COLUMN=CATEGORY, got {label}") from None
        options["text_column"] = text_column or "text"
        if overall_column:
            options["overall_column"] = overall_column
    try:
        wanted = [category(c).id for c in categories] if categories else list(CANONICAL_IDS)
    except KeyError as error:
        raise fail(str(error.args[0])) from None

    rows = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        for path in data:
            task = progress.add_task(f"reading {path.name}", total=limit)
            try:
                # the column map is for generic files; fixed-format files beside them ignore it
                generic = (data_format or detect_format(path, generic=bool(options)) or "") in ("jsonl", "csv")
                for row in load(path, data_format, limit=limit, **(options if generic else {})):
                    rows.append(row)
                    progress.advance(task)
            except (OSError, ValueError, KeyError) as error:
                raise fail(str(error.args[0]) if isinstance(error, KeyError) else str(error)) from None
        if not rows:
            raise fail("no rows read from the --data files")
        embed = progress.add_task("embedding", total=len(rows))
        fit = progress.add_task("fitting heads", total=len(wanted))

        def report(stage: str, done: int, total: int) -> None:
            progress.update(embed if stage == "embed" else fit, completed=done, total=total)

        try:
            heads, reports = train_heads(
                rows,
                categories=wanted,
                min_positives=min_positives,
                folds=folds,
                sources=[str(p) for p in data],
                progress=report,
            )
        except RuntimeError as error:  # the embedder's packages or model files are missing
            raise fail(str(error)) from None

    table = Table(title=f"embedding heads from {len(rows)} rows")
    for name, justify in (("category", "left"), ("positives", "right"), ("negatives", "right")):
        table.add_column(name, justify=justify)
    table.add_column(f"{folds}-fold AUROC", justify="right")
    skipped = []
    for r in reports:
        if r.skipped is None:
            table.add_row(
                f"{r.category} {category(r.category).slug}", str(r.positives), str(r.negatives), f"{r.cv_auroc:.3f}"
            )
        else:
            skipped.append(r)
    console.print(table)
    unlabelled = [r.category for r in skipped if r.positives == 0]
    if unlabelled:
        console.print(
            f"[yellow]skipped, no positive rows in the data: {', '.join(unlabelled)}[/yellow]", soft_wrap=True
        )
    for r in skipped:
        if r.positives:
            console.print(
                f"[yellow]skipped {r.category} {category(r.category).slug}: {escape(r.skipped)}[/yellow]",
                soft_wrap=True,
            )
    if not heads.categories:
        raise fail(f"no category had enough labelled rows; nothing written to {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    heads.save(out)
    console.print(f"wrote {len(heads.categories)} heads to {escape(str(out))}", soft_wrap=True)


if __name__ == "__main__":
    experts_app()
