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
        default = "yes" if s.runs_on_cpu and s.ships_its_weights else ""
        row = [s.name, s.backend, s.family or "", s.model or s.package or "", s.cost, f"{s.hardware.gpus:g}", default]
        table.add_row(*row, s.description)
    console.print(table)


def _read_texts(text: str | None, file: Path | None) -> list[str]:
    """The texts to score: the argument, or one per line of ``--file`` (``-``: standard input; ``.jsonl``: the
    ``text`` or ``prompt`` field of each object)."""
    import json
    import sys

    if text is not None and file is not None:
        raise ValueError("give TEXT or --file, not both")
    if text is not None:
        return [text]
    if file is None:
        if sys.stdin.isatty():
            raise ValueError("nothing to score: give TEXT, --file PATH, or pipe texts on standard input")
        file = Path("-")
    lines = sys.stdin.read().splitlines() if str(file) == "-" else file.read_text(encoding="utf-8").splitlines()
    texts = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if file.suffix == ".jsonl":
            try:
                obj = json.loads(line)
                texts.append(str(obj["text"] if "text" in obj else obj["prompt"]))
            except (ValueError, KeyError, TypeError):
                raise ValueError(
                    f"--file {file}: line {n}: not a JSON object with a 'text' or 'prompt' field"
                ) from None
        else:
            texts.append(line)
    if not texts:
        raise ValueError(f"--file {file}: no text in it")
    return texts


@experts_app.command("score")
def experts_score(
    text: str | None = typer.Argument(None, help="The user prompt to score (or use --file, or standard input)."),
    file: Path | None = typer.Option(
        None, "--file", help="Texts to score, one per line ('-': standard input; .jsonl: a 'text' or 'prompt' field)."
    ),
    expert: list[str] = typer.Option(None, "--expert", help="Catalog names (default: the CPU experts)."),
    heads: list[Path] = typer.Option(
        None, "--heads", exists=True, dir_okay=False, help="Also score with MiniLM heads from this file (repeatable)."
    ),
    jsonl: bool = typer.Option(False, "--jsonl", help="Print one JSON object per text instead of a table."),
    catalog: Path = typer.Option(None, help="Catalog folder (default: the repository's experts/)."),
) -> None:
    """Score prompts with catalog experts (and heads files) and print each expert's probability per category.

    One text: a table of categories by experts. Several (``--file``, standard input): a table of texts by experts
    with each expert's highest category, or ``--jsonl``.
    """
    import asyncio
    import json

    from rich.markup import escape

    from aegis_online.catalog import CatalogError, cpu_expert_specs, default_catalog_dir, load_catalog
    from aegis_online.experts import Expert, ExpertInput, score_with_deadline
    from aegis_online.experts.build import build_expert
    from aegis_online.schemas import Message
    from aegis_online.taxonomy import CANONICAL

    def fail(message: str) -> typer.Exit:
        console.print(f"[red]{escape(message)}[/red]", soft_wrap=True)
        return typer.Exit(code=1)

    try:
        texts = _read_texts(text, file)
        specs = load_catalog(catalog or default_catalog_dir())
        chosen = [s for s in specs if s.name in expert] if expert else cpu_expert_specs(specs)
        missing = set(expert or ()) - {s.name for s in chosen}
        if missing:
            raise CatalogError(f"--expert: unknown experts {sorted(missing)}")
        experts: list[Expert] = [build_expert(s) for s in chosen]
        if heads:
            from aegis_online.experts.cpu import EmbeddingExpert

            experts += [EmbeddingExpert(heads=h, zero_shot=False, name=f"heads:{h.stem}") for h in heads]
    except (CatalogError, ImportError, ValueError, OSError) as error:
        raise fail(str(error)) from None
    items = [
        ExpertInput(messages=(Message(role="user", content=t),), check="prompt", categories=CANONICAL) for t in texts
    ]

    async def run() -> list:
        return [await score_with_deadline(e, items, deadline_s=600.0) for e in experts]

    per_expert = asyncio.run(run())
    for outputs in per_expert:
        if outputs[0].error:
            console.print(f"[red]{escape(outputs[0].expert)}: {escape(outputs[0].error)}[/red]", soft_wrap=True)
    if jsonl:
        for i, t in enumerate(texts):
            record = {"text": t, "scores": {outs[i].expert: outs[i].scores for outs in per_expert if outs[i].ok}}
            typer.echo(json.dumps(record, sort_keys=True))
        return
    if len(texts) == 1:
        table = Table(title="probability per category")
        table.add_column("category")
        for e in experts:
            table.add_column(e.name, justify="right")
        for cat in CANONICAL:
            cells = [f"{o[0].scores[cat.id]:.3f}" if cat.id in o[0].scores else "" for o in per_expert]
            table.add_row(f"{cat.id} {cat.slug}", *cells)
    else:
        table = Table(title=f"highest category per text ({len(texts)} texts)")
        table.add_column("text", overflow="ellipsis", max_width=60)
        for e in experts:
            table.add_column(e.name, justify="right")
        for i, t in enumerate(texts):
            cells = []
            for outs in per_expert:
                scores = outs[i].scores
                top = max(scores, key=scores.__getitem__) if scores else None
                cells.append(f"{top} {scores[top]:.3f}" if top else "")
            table.add_row(escape(t), *cells)
    console.print(table)


def provenance_path(out: Path) -> Path:
    """Where a trained artifact's provenance goes: beside it, ``NAME.provenance.json``."""
    return out.with_name(f"{out.stem}.provenance.json")


@experts_app.command("train-head")
def experts_train_head(
    data: list[Path] = typer.Option(None, "--data", help="Labelled data file; repeat for several."),
    shared_data: bool = typer.Option(
        False,
        "--shared-data",
        help="Also read every shared labelled set (../shared/data or $AEGIS_DATA_DIR), less one row in ten "
        "(datasets.held_out) kept for the demo.",
    ),
    out: Path = typer.Option(..., "--out", dir_okay=False, help="Heads file to write (.npz)."),
    kind: str = typer.Option(
        "minilm",
        "--kind",
        help="minilm: logistic heads on MiniLM embeddings; lexical: TF-IDF word and character "
        "n-grams with logistic heads.",
    ),
    data_format: str | None = typer.Option(
        None,
        "--format",
        help="Format of every --data file: openai_moderation, xstest, simplesafetytests, davidson, harmbench, jsonl, "
        "csv (default: detected from each file name or header).",
    ),
    limit: int | None = typer.Option(None, "--limit", min=1, help="Rows read from each data file."),
    categories: list[str] | None = typer.Option(None, "--category", help="Category id to train (default: all)."),
    overall: bool = typer.Option(
        True, "--overall/--no-overall", help="Also train the whole-request head (from safe/unsafe verdicts)."
    ),
    text_column: str | None = typer.Option(None, help="Text column of generic jsonl/csv files."),
    label: list[str] | None = typer.Option(None, "--label", help="COLUMN=CATEGORY for generic jsonl/csv files."),
    overall_column: str | None = typer.Option(None, help="Overall safe/unsafe column of generic jsonl/csv files."),
    min_positives: int = typer.Option(10, min=2, help="Fewest positives (and negatives) a head needs."),
    folds: int = typer.Option(5, min=2, help="Cross-validation folds for the reported AUROC."),
) -> None:
    """Train logistic heads per category and for the whole request on labelled data; print each head's
    cross-validated AUROC; write the heads and, beside them, their provenance (NAME.provenance.json)."""
    import hashlib
    import json
    import shlex
    import sys

    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from aegis_online.datasets import (
        HELD_OUT_ONE_IN,
        SHARED_SETS,
        data_file_id,
        detect_format,
        held_out,
        load,
        shared_data_dir,
    )
    from aegis_online.experts.cpu.provenance import source_line
    from aegis_online.schemas import OVERALL
    from aegis_online.taxonomy import CANONICAL_IDS, category

    def fail(message: str) -> typer.Exit:
        console.print(f"[red]{escape(message)}[/red]", soft_wrap=True)
        return typer.Exit(code=1)

    if kind not in ("minilm", "lexical"):
        raise fail(f"--kind must be minilm or lexical, got {kind!r}")
    if not data and not shared_data:
        raise fail("give --data PATH (repeatable) or --shared-data")
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
    #: (path, reader options, format, whether its held-out rows stay out) of every file read
    sources: list[tuple[Path, dict[str, object], str | None, bool]] = [(p, {}, data_format, False) for p in data or []]
    #: how the provenance names each file: as given, or the shared set's name and path (not this machine's folder)
    data_sets: list[dict[str, object]] = [{"name": p.name, "path": data_file_id(p)} for p in data or []]
    if shared_data:
        base = shared_data_dir()
        if base is None:
            raise fail("--shared-data: no shared data folder (../shared/data beside the repository, or AEGIS_DATA_DIR)")
        sources += [(base / s.path, dict(s.options), None, True) for s in SHARED_SETS]
        data_sets += [{"name": s.name, "path": f"shared:{s.path}"} for s in SHARED_SETS]

    rows = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as progress:
        for (path, fixed_options, fmt, holds_out), described in zip(sources, data_sets, strict=True):
            task = progress.add_task(f"reading {path.name}", total=limit)
            read_before, kept_out = len(rows), 0
            try:
                # the column map is for generic files; fixed-format files beside them ignore it
                generic = (fmt or detect_format(path, generic=bool(options)) or "") in ("jsonl", "csv")
                reader_options = {**fixed_options, **(options if generic else {})}
                for row in load(path, fmt, limit=limit, **reader_options):
                    if holds_out and held_out(row.text):
                        kept_out += 1
                    else:
                        rows.append(row)
                    progress.advance(task)
            except (OSError, ValueError, KeyError) as error:
                raise fail(str(error.args[0]) if isinstance(error, KeyError) else str(error)) from None
            described["rows"] = len(rows) - read_before
            if holds_out:
                described["held_out_rows"] = kept_out
        if not rows:
            raise fail("no rows read from the --data files")
        stage_tasks: dict[str, object] = {}

        def report(stage: str, done: int, total: int) -> None:
            if stage not in stage_tasks:
                stage_tasks[stage] = progress.add_task({"embed": "embedding", "fit": "fitting heads"}.get(stage, stage))
            progress.update(stage_tasks[stage], completed=done, total=total)  # type: ignore[arg-type]

        command = shlex.join(["aegis-online", *sys.argv[1:]]) if sys.argv and sys.argv[0] else None
        trainer_options = {
            "categories": wanted,
            "min_positives": min_positives,
            "folds": folds,
            "sources": [
                source_line(str(d["name"]), str(d["path"]), int(str(d["rows"])), held_out_left_out="held_out_rows" in d)
                for d in data_sets
            ],
            "overall": overall,
            "command": command,
            "progress": report,
        }
        try:
            if kind == "minilm":
                from aegis_online.experts.cpu import train_heads

                heads, reports = train_heads(rows, **trainer_options)  # type: ignore[arg-type]
            else:
                from aegis_online.experts.cpu.lexical import train_lexical

                heads, reports = train_lexical(rows, **trainer_options)  # type: ignore[arg-type]
        except RuntimeError as error:  # the embedder's packages or model files are missing
            raise fail(str(error)) from None

    def name(cat: str) -> str:
        return "overall (whole request)" if cat == OVERALL else f"{cat} {category(cat).slug}"

    table = Table(title=f"{kind} heads from {len(rows)} rows")
    for column, justify in (("head", "left"), ("positives", "right"), ("negatives", "right")):
        table.add_column(column, justify=justify)
    table.add_column(f"{folds}-fold AUROC", justify="right")
    skipped = []
    for r in reports:
        if r.skipped is None:
            table.add_row(name(r.category), str(r.positives), str(r.negatives), f"{r.cv_auroc:.3f}")
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
            console.print(f"[yellow]skipped {name(r.category)}: {escape(r.skipped)}[/yellow]", soft_wrap=True)
    kept = [r.category for r in reports if r.skipped is None]
    if not kept:
        raise fail(f"no head had enough labelled rows; nothing written to {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    heads.save(out)
    provenance = {
        **heads.metadata,
        "kind": kind,
        "artifact": out.name,
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "bytes": out.stat().st_size,
        "data_sets": data_sets,
        "heads": kept,
    }
    if shared_data:
        provenance["held_out"] = (
            f"the shared rows whose text's SHA-256 is 0 mod {HELD_OUT_ONE_IN} (datasets.held_out; each set's "
            "held_out_rows): kept out of training, for the demo"
        )
    provenance_path(out).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n")
    console.print(
        f"wrote {len(kept)} heads to {escape(str(out))} and their provenance to {escape(str(provenance_path(out)))}",
        soft_wrap=True,
    )


if __name__ == "__main__":
    experts_app()
