"""`craft prompts enrich`: enriched prompt variants written by the served MLLM."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
import yaml
from rich.markup import escape

from craft_ray.cli.common import console, err_console
from craft_ray.errors import ConfigError

app = typer.Typer(help="Prompt enrichment by an MLLM.", no_args_is_help=True)


def _label_sets(spec, label_set: list[str] | None) -> list[list[str]]:
    if not label_set:
        return [[label] for label in spec.labels]
    sets = [[x.strip() for x in text.split(",") if x.strip()] for text in label_set]
    for labels in sets:
        if not labels:
            raise ConfigError("--label-set: empty label set")
        spec.check_labels(labels, where="--label-set")
    return sets


@app.command("enrich")
def prompts_enrich(
    dataset: Annotated[str, typer.Option(help="dataset whose label sets get enriched prompts")],
    endpoint: Annotated[str, typer.Option(help="OpenAI-compatible MLLM URL, e.g. http://127.0.0.1:8000/v1")],
    out: Annotated[Path, typer.Option(help="enrichment YAML (prompts.enrichment: file); also the cache")],
    label_set: Annotated[
        list[str] | None, typer.Option(help="comma-separated label set (repeat; default: each label alone)")
    ] = None,
    variants: Annotated[int, typer.Option(min=1, max=8, help="variants per label set")] = 3,
    model: Annotated[
        str | None, typer.Option(help="model id (default: the first the endpoint lists)")
    ] = None,
    attempts: Annotated[int, typer.Option(min=1, help="tries per label set before the static fallback")] = 3,
    overwrite: Annotated[bool, typer.Option(help="ignore and replace an existing --out")] = False,
) -> None:
    """Ask the MLLM for prompt variants per label set; an existing --out from the same model and
    prompt is a cache: only label sets it lacks are asked."""
    from craft_ray.knowledge.labels import get_dataset
    from craft_ray.knowledge.prompts import VariantEnrichment
    from craft_ray.outputs import write_text_atomic
    from craft_ray.serving.client import MLLMClient
    from craft_ray.serving.prompt_enricher import enrich_prompts

    spec = get_dataset(dataset)
    sets = _label_sets(spec, label_set)
    previous = None
    if out.exists() and not overwrite:
        previous = yaml.safe_load(out.read_text()) or {}

    def report(result) -> None:
        name = " + ".join(result.labels)
        if result.source == "fallback":
            why = result.problems[-1] if result.problems else "no answer"
            err_console.print(
                f"[yellow]warning:[/yellow] {name}: no valid answer in {len(result.problems)} attempt(s) "
                f"(last: {escape(why)}); using static variants",
                highlight=False,
                soft_wrap=True,  # one line per warning: the reason may be long
            )
        else:
            console.print(f"{name}: {len(result.variants)} variant(s) ({result.source})")

    client = MLLMClient(endpoint, model)
    document = enrich_prompts(client, spec, sets, variants, attempts, previous, str(out), report)
    if previous:  # keep the cached label sets this run did not ask for
        asked = {tuple(e["labels"]) for e in document["label_sets"]}
        document["label_sets"] += [
            e for e in previous.get("label_sets", []) if tuple(e["labels"]) not in asked
        ]
    write_text_atomic(out, yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
    VariantEnrichment.from_file(spec, out)  # what training will read: fail here, not there
    console.print(f"wrote {out}: {len(document['label_sets'])} label set(s)")
