"""`craft query`: ask the served CAS evaluator or MLLM from the command line."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from craft_ray.cli.common import console
from craft_ray.errors import CraftError

app = typer.Typer(help="Query the served CAS evaluator or MLLM over HTTP.", no_args_is_help=True)
API_KEY_ENV = "CRAFT_EVALUATOR_API_KEY"


def _labels(text: str) -> list[str]:
    labels = [x.strip() for x in text.split(",") if x.strip()]
    if not labels:
        raise CraftError("--labels: give at least one label (comma-separated)")
    return labels


@app.command("cas")
def query_cas(
    url: Annotated[str, typer.Option(help="evaluator base URL, e.g. http://127.0.0.1:8000")],
    dataset: Annotated[str, typer.Option(help="dataset whose evaluator scores the images")],
    image: Annotated[
        list[Path],
        typer.Option(help="PNG/JPEG/TIFF file, 8 or 16 bit, any size (repeat for several)"),
    ],
    labels: Annotated[str, typer.Option(help="comma-separated labels of every image")],
    api_key: Annotated[
        str | None, typer.Option(help=f"bearer key (default: ${API_KEY_ENV} when set)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the raw JSON answer")] = False,
) -> None:
    """Score images with the CAS evaluator service and print the scores."""
    from craft_ray.serving.client import CASClient

    label_list = _labels(labels)
    client = CASClient(url, api_key or os.environ.get(API_KEY_ENV) or None)
    answer = client.score(dataset, [(path, label_list) for path in image])
    if as_json:
        console.print_json(json.dumps(answer))
        return
    table = Table(title=escape(f"CAS of {dataset} images for {', '.join(label_list)}"))
    columns = ("cas", "pathology", "checklist", "anatomy", "realism", "threshold", "below_threshold")
    for col in ("image", *columns):
        table.add_column(col, justify="right")
    failed = []
    for path, result in zip(image, answer["results"], strict=True):
        if "error" in result:  # this image alone could not be scored; the others were
            failed.append(f"{path.name}: {result['error']['message']}")
            table.add_row(path.name, "error", *["-"] * (len(columns) - 1))
            continue
        cells = [result.get(c) for c in columns]
        table.add_row(
            path.name, *("-" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v) for v in cells)
        )
    console.print(table)
    for path, result in zip(image, answer["results"], strict=True):  # what the service did to each image
        steps = (result.get("preprocessing") or {}).get("steps")
        if steps:
            console.print(f"{path.name}: {'; '.join(steps)}", highlight=False, soft_wrap=True)
    for line in failed:
        console.print(escape(f"not scored: {line}"))


@app.command("mllm")
def query_mllm(
    url: Annotated[str, typer.Option(help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")],
    question: Annotated[str, typer.Option(help="the question")],
    image: Annotated[Path | None, typer.Option(help="PNG/JPEG to ask about")] = None,
    yes_no: Annotated[bool, typer.Option("--yes-no", help="print P(yes) instead of the answer text")] = False,
    model: Annotated[
        str | None, typer.Option(help="model id (default: the first the endpoint lists)")
    ] = None,
    max_tokens: Annotated[int, typer.Option()] = 128,
) -> None:
    """Ask the served MLLM a question, optionally about an image."""
    from craft_ray.data.images import load_image
    from craft_ray.serving.client import MLLMClient

    client = MLLMClient(url, model)
    tensor = None
    if image is not None:
        import numpy as np
        import torch

        arr = np.asarray(load_image(image, "RGB"))
        tensor = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255
    if yes_no:
        if tensor is None:
            raise CraftError("--yes-no needs --image")
        console.print(f"P(yes) = {client.yes_probability(tensor, question):.4f}  ({client.model})")
    else:
        console.print(escape(client.ask(question, tensor, max_tokens=max_tokens)))
