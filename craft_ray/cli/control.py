"""`craft control`: the positive control of CRAFT's reward (a classifier reward vs the VLM reward)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from craft_ray.cli.common import console, err_console
from craft_ray.errors import CraftError


def control(
    out: Annotated[Path, typer.Option(help="JSON file to write the table to")],
    targets: Annotated[
        str | None,
        typer.Option(
            help="comma-separated findings, one short run each per reward "
            "(default for chexpert: Support Devices,Cardiomegaly,Pleural Effusion)"
        ),
    ] = None,
    rewards: Annotated[
        str, typer.Option(help="comma-separated: classifier, vlm, vlm-augmented")
    ] = "classifier,vlm,vlm-augmented",
    dataset: Annotated[str, typer.Option(help="chexpert | isic | fundus | histopath")] = "chexpert",
    steps: Annotated[int, typer.Option(min=1, help="CRAFT steps per run")] = 30,
    images: Annotated[int, typer.Option(min=2, help="images per target before and after")] = 16,
    seed: Annotated[int, typer.Option()] = 0,
    overwrite: Annotated[bool, typer.Option(help="replace --out if it exists")] = False,
) -> None:
    """Does a reward's gradient teach a finding an independent classifier then reads? Short CRAFT
    runs on one finding each: with a classifier reward (phantom-reward, the positive control) and the
    VLM reward (with and without augmentation); the out-of-family classifier reads images made from
    the same noise before and after."""
    from craft_ray.demo.control import ControlSettings, as_json, run_control
    from craft_ray.outputs import check_output, write_text_atomic

    check_output(out, overwrite)
    if targets is None:
        if dataset != "chexpert":
            raise CraftError(
                f"--targets: the default findings are chest findings; name {dataset}'s with --targets"
            )
        targets = "Support Devices,Cardiomegaly,Pleural Effusion"
    settings = ControlSettings(dataset=dataset, steps=steps, images=images, seed=seed)
    chosen = [r.strip() for r in rewards.split(",") if r.strip()]
    wanted = [t.strip() for t in targets.split(",") if t.strip()]
    rows = run_control(
        settings, wanted, chosen, lambda text: err_console.print(escape(text), highlight=False)
    )
    table = Table(
        title=escape(f"positive control on {dataset}: {steps} CRAFT steps per run, {images} images")
    )
    for col in (
        "target",
        "reward",
        "training reward first -> last",
        "OOF P(target) before -> after",
        "images up",
    ):
        table.add_column(col, justify="left" if col in ("target", "reward") else "right")
    for r in rows:
        table.add_row(
            escape(r.target),
            r.reward,
            f"{r.reward_first:.3f} -> {r.reward_last:.3f}",
            f"{r.p_before:.3f} -> {r.p_after:.3f}",
            f"{r.paired_wins}/{r.images}",
        )
    table.caption = (
        "a reward whose training value rises while the out-of-family classifier's P stays put is hacked; "
        "the classifier reward is the positive control of the gradient path"
    )
    console.print(table)
    write_text_atomic(out, json.dumps(as_json(settings, rows), indent=2) + "\n")
    console.print(f"wrote {out}", soft_wrap=True)
