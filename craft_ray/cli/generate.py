"""`craft generate`: images from a run (or a config's base model), with a contact sheet."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Annotated

import typer

from craft_ray.cli.common import console, progress_bar
from craft_ray.cli.evaluate import source_from_options
from craft_ray.errors import CraftError

CONTACT_SHEET = "contact_sheet.png"


def generate(
    labels: Annotated[
        str, typer.Option(help='comma-separated label set, e.g. "Pleural Effusion,Support Devices"')
    ],
    out: Annotated[Path, typer.Option(help="directory to write (must be new or empty)")],
    run: Annotated[Path | None, typer.Option(help="run directory left by `craft train`")] = None,
    checkpoint: Annotated[int | None, typer.Option(help="use checkpoint_NNNNNN instead of final/")] = None,
    method: Annotated[str | None, typer.Option(help="'pretrained': the base model of --config")] = None,
    config: Annotated[Path | None, typer.Option(help="experiment YAML (with --method pretrained)")] = None,
    n: Annotated[int, typer.Option(help="images to generate")] = 16,
    seed: Annotated[int, typer.Option(help="image i uses seed + i")] = 0,
    steps: Annotated[int | None, typer.Option(help="DDIM steps (default: the run's sampler_steps)")] = None,
    guidance_scale: Annotated[float | None, typer.Option(help="CFG scale (default: the run's)")] = None,
    eta: Annotated[float | None, typer.Option(help="DDIM eta (default: the run's)")] = None,
    batch_size: Annotated[int, typer.Option(help="images per pipeline call")] = 8,
    device: Annotated[str, typer.Option(help="cpu | cuda | auto")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
) -> None:
    """Write PNGs, labels.csv (scorable with `craft cas score --images`), samples.json and a
    contact sheet with the label set and seed under each image."""
    import torch

    from craft_ray.data.images import encode_png
    from craft_ray.evaluation import ImageGenerator, SamplerSettings
    from craft_ray.evaluation.grids import image_grid
    from craft_ray.knowledge.labels import get_dataset
    from craft_ray.outputs import atomic_dir, check_output

    if n < 1 or batch_size < 1:
        raise CraftError(f"--n and --batch-size must be at least 1, got {n} and {batch_size}")
    source = source_from_options(run, checkpoint, method, config)
    spec = get_dataset(source.cfg.dataset.name)
    label_set = [x.strip() for x in labels.split(",") if x.strip()]
    spec.check_labels(label_set, where="--labels")
    if not label_set:
        raise CraftError("--labels: give at least one label")
    check_output(out, overwrite, kind="dir")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    sampler = SamplerSettings.from_config(source.cfg, steps, guidance_scale, eta)
    generator = ImageGenerator(source, sampler, device)
    seeds = [seed + i for i in range(n)]
    images, prompts = [], []
    with progress_bar(f"generating with {source.name}") as update:
        for start in range(0, n, batch_size):
            batch, batch_prompts = generator.generate(
                [label_set] * len(seeds[start : start + batch_size]), seeds[start : start + batch_size]
            )
            images += batch
            prompts += batch_prompts
            update(len(images), n)
    names = [f"sample_{i:04d}_seed{s}.png" for i, s in enumerate(seeds)]
    with atomic_dir(out) as tmp:
        for name, image in zip(names, images, strict=True):
            (tmp / name).write_bytes(encode_png(image))
        with (tmp / "labels.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "labels"])
            writer.writerows([name, "|".join(label_set)] for name in names)
        samples = {
            "model": source.name,
            "method": source.method,
            "sampler": sampler.__dict__,
            "labels": label_set,
            "images": [
                {"file": f, "seed": s, "prompt": p} for f, s, p in zip(names, seeds, prompts, strict=True)
            ],
        }
        (tmp / "samples.json").write_text(json.dumps(samples, indent=2) + "\n")
        captions = [f"{', '.join(label_set)}\nseed {s}" for s in seeds]
        image_grid(
            images,
            captions,
            tmp / CONTACT_SHEET,
            title=f"{source.name}: {', '.join(label_set)}",
            cols=min(8, n),
        )
    console.print(f"wrote {n} images, labels.csv, samples.json and {CONTACT_SHEET} to {out}")
