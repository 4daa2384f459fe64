"""`craft checklists build`: clinical checklists written by the served MLLM."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.markup import escape

from craft_ray.cli.common import console, err_console

app = typer.Typer(help="Clinical checklists made by an MLLM.", no_args_is_help=True)


@app.command("build")
def checklists_build(
    dataset: Annotated[str, typer.Option(help="dataset whose labels get checklists")],
    endpoint: Annotated[str, typer.Option(help="OpenAI-compatible MLLM URL, e.g. http://127.0.0.1:8000/v1")],
    out: Annotated[Path, typer.Option(help="overlay YAML to write (use with --checklists)")],
    labels: Annotated[str | None, typer.Option(help="comma-separated labels (default: all)")] = None,
    model: Annotated[
        str | None, typer.Option(help="model id (default: the first the endpoint lists)")
    ] = None,
    items: Annotated[int, typer.Option(min=2, max=8, help="criteria to ask for per label")] = 4,
    attempts: Annotated[int, typer.Option(min=1, help="tries per label before the static fallback")] = 3,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out")] = False,
) -> None:
    """Ask the MLLM for each label's visual criteria; fall back to the static base per label."""
    from craft_ray.knowledge.checklists import load_knowledge
    from craft_ray.knowledge.labels import get_dataset
    from craft_ray.outputs import check_output, write_text_atomic
    from craft_ray.serving.checklist_builder import build_checklists
    from craft_ray.serving.client import MLLMClient

    check_output(out, overwrite)
    spec = get_dataset(dataset)
    label_list = [x.strip() for x in labels.split(",")] if labels else list(spec.labels)

    def report(result) -> None:
        if result.source == "mllm":
            console.print(f"{result.label}: {len(result.items)} criteria from the MLLM")
        else:
            why = result.problems[-1] if result.problems else "no answer"
            err_console.print(
                f"[yellow]warning:[/yellow] {result.label}: no valid answer in {len(result.problems)} "
                f"attempt(s) (last: {escape(why)}); using the static checklist",
                highlight=False,
                soft_wrap=True,  # one line per warning: the reason may be long
            )

    document = build_checklists(MLLMClient(endpoint, model), spec, label_list, items, attempts, report)
    write_text_atomic(out, yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    load_knowledge([out])  # what training and `--checklists` will do: fail here, not there
    sources = document["provenance"]["sources"]
    fallbacks = sum(s == "fallback" for s in sources.values())
    console.print(
        f"wrote {out}: {len(sources) - fallbacks} label(s) from {document['provenance']['model']}, {fallbacks} static"
    )
