"""`craft cas probe`: how easy is a reward VLM to fool? Pixel ascent checked by an independent classifier."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from craft_ray.cli.common import console, progress_bar
from craft_ray.errors import CraftError


def cas_probe(
    vlm: Annotated[
        str, typer.Option(help="the reward VLM: phantom | phantom-eval | tiny | small | path | hub id")
    ],
    data: Annotated[str, typer.Option(help="real-image dataset directory or URI (the images pushed)")],
    classifier: Annotated[
        str,
        typer.Option(
            help="independent classifier reading the images: phantom (the dataset's CNN) | a directory"
        ),
    ] = "phantom",
    split: Annotated[str, typer.Option(help="split of real images to start from")] = "test",
    labels: Annotated[
        str | None, typer.Option(help="comma-separated target labels (default: those the classifier knows)")
    ] = None,
    n: Annotated[int, typer.Option(min=1, help="images per target label")] = 8,
    steps: Annotated[int, typer.Option(min=1, help="ascent steps")] = 40,
    eps: Annotated[float, typer.Option(help="L-infinity budget per pixel, in (0, 1]")] = 0.1,
    dimension: Annotated[
        str, typer.Option(help="pathology (the finding term) | cas (all four)")
    ] = "pathology",
    augment_copies: Annotated[
        int,
        typer.Option(min=0, help="ascend the reward averaged over this many random augmentations (0: off)"),
    ] = 0,
    seed: Annotated[int, typer.Option()] = 0,
    out: Annotated[Path | None, typer.Option(help="write the results as JSON here")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace --out if it exists")] = False,
    card: Annotated[
        bool,
        typer.Option(help="record the results in the VLM's model card (a directory holding card.json)"),
    ] = False,
) -> None:
    """Push real images toward other labels by pixel ascent on the reward; report the reward's gain
    against the independent classifier's (the transfer: 1 = the classifier agrees, 0 = fooled alone)."""
    from craft_ray.outputs import check_output, write_text_atomic

    if out is not None:
        check_output(out, overwrite)
    from craft_ray.cas.probe import ProbeSettings, probe_dataset, summarise, vlm_reward
    from craft_ray.data import read_manifest
    from craft_ray.data.reading import ImageParquetDataset
    from craft_ray.knowledge.labels import get_dataset
    from craft_ray.model_names import with_modality
    from craft_ray.models import build_vlm
    from craft_ray.models.classifier import resolve_classifier

    settings = ProbeSettings(steps, eps, None, augment_copies, seed)
    manifest = read_manifest(data)
    spec = get_dataset(manifest.dataset)
    if split not in manifest.counts:
        raise CraftError(f"{data} has no split {split!r} (known: {', '.join(sorted(manifest.counts))})")
    clf = resolve_classifier(with_modality(classifier, spec.modality))
    if clf.card.dataset != spec.name:
        raise CraftError(f"classifier {classifier} is for '{clf.card.dataset}', the data is '{spec.name}'")
    targets = (
        [x.strip() for x in labels.split(",")]
        if labels
        else [x for x in clf.labels if x in manifest.label_space]
    )
    spec.check_labels(targets, where="--labels")
    missing = [x for x in targets if x not in clf.labels]
    if missing:
        raise CraftError(f"the classifier does not know the label(s) {missing} (it knows {clf.labels})")
    vlm_name = with_modality(vlm, spec.modality)
    card_dir = _card_directory(vlm_name) if card else None
    reward = vlm_reward(build_vlm(vlm_name), spec.name, list(manifest.label_space), dimension)
    dataset = ImageParquetDataset(data, split, labels=list(manifest.label_space), channels=spec.channels)
    import torch

    images = torch.stack([dataset[i]["pixel_values"] for i in range(len(dataset))])
    with progress_bar(f"probing {vlm_name}") as update:
        rows = probe_dataset(reward, clf, images, dataset.label_sets(), targets, n, settings, update)
    summary = summarise(rows)
    table = Table(
        title=escape(f"probe of {vlm_name} ({dimension}) on {data} [{split}], eps={eps}, {steps} steps")
    )
    for col in ("target", "images", "reward before", "after", "classifier P before", "after", "transfer"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r.label, str(r.n), f"{r.reward_before:.3f}", f"{r.reward_after:.3f}",
            f"{r.classifier_before:.3f}", f"{r.classifier_after:.3f}", f"{r.transfer:.3f}",
        )  # fmt: skip
    table.caption = (
        f"transfer = classifier gain / reward gain; mean {summary['transfer_mean']:.3f} "
        f"(reward gain {summary['reward_gain_mean']:.3f}, classifier gain {summary['classifier_gain_mean']:.3f})"
    )
    console.print(table)
    result = {
        "vlm": vlm_name,
        "classifier": with_modality(classifier, spec.modality),
        "data": data,
        "split": split,
        "dimension": dimension,
        "settings": settings.__dict__,
        "labels": [r.as_dict() for r in rows],
        "summary": summary,
    }
    if out is not None:
        write_text_atomic(out, json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {out}", soft_wrap=True)
    if card_dir is not None:
        from craft_ray.pretrain.card import record_probe

        command = (
            " ".join(["craft", "cas", "probe", *sys.argv[3:]]) if sys.argv[1:3] == ["cas", "probe"] else ""
        )
        record_probe(card_dir, {**result, "command": command or f"craft cas probe --vlm {vlm} --data {data}"})
        console.print(f"recorded the probe in {card_dir / 'card.json'}", soft_wrap=True)


def _card_directory(vlm_name: str) -> Path:
    """The directory of the VLM's model card: a shipped phantom VLM's or a directory given by path."""
    from craft_ray.model_names import family_of
    from craft_ray.models.phantom import phantom_vlm_dir

    directory = phantom_vlm_dir(vlm_name) if family_of(vlm_name) else Path(vlm_name)
    if not (directory / "card.json").is_file():
        raise CraftError(f"--card: {vlm_name} has no model card (card.json) to record the probe in")
    return directory
