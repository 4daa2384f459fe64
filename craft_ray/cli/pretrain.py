"""`craft pretrain vlm|diffusion|classifier`: train the shipped phantom models (weights + model card)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from craft_ray.cli.common import console, err_console

app = typer.Typer(help="Train the small phantom models the name 'phantom' resolves to.", no_args_is_help=True)


def _command_line(command: str, **options) -> str:
    """The full command with every option spelled out, so the card stays exact when defaults change."""
    parts = [f"--{name.replace('_', '-')} {shlex.quote(str(value))}" for name, value in options.items()]
    return f"craft pretrain {command} " + " ".join(parts)


def _log(message: str) -> None:
    err_console.print(message, highlight=False, soft_wrap=True)


def _threads(threads: int) -> None:
    import torch

    # one thread by default: on a shared 2-core machine, two threads contend and run ~5x slower
    torch.set_num_threads(threads)


def _pretrain(name: str, run, make_config, out: Path, overwrite: bool, threads: int, **settings) -> dict:
    """Check --out, set the threads, train into a temporary directory that becomes `out` only when
    complete; the card records the command with every option spelled out. Returns the gate metrics."""
    from craft_ray.outputs import atomic_dir, check_output

    check_output(out, overwrite, kind="dir")
    _threads(threads)
    cfg = make_config(**settings)
    rest = dict(settings)
    first = {"modality": rest.pop("modality")} if "modality" in rest else {}
    command = _command_line(name, **first, out=out, **rest, threads=threads)
    with atomic_dir(out) as tmp:
        return run(cfg, tmp, command, _log)


def _verdict(metrics: dict) -> str:
    return "[green]passes[/green]" if metrics["passes"] else "[red]FAILS[/red]"


@app.command("vlm")
def pretrain_vlm(
    modality: Annotated[str, typer.Option(help="chest | derm | fundus | histo")],
    out: Annotated[Path, typer.Option(help="directory to write (weights, tokenizer, card)")],
    steps: Annotated[int, typer.Option(help="optimiser steps")] = 3000,
    n_train: Annotated[int, typer.Option(help="training phantoms of the modality")] = 20000,
    n_negatives: Annotated[
        int, typer.Option(help="images per negative kind: each other modality, distractors, corruptions")
    ] = 1000,
    batch_size: Annotated[int, typer.Option()] = 64,
    gate_n: Annotated[int, typer.Option(help="held-out phantoms (seed 999) for the gate")] = 400,
    seed: Annotated[int, typer.Option(help="initialisation and batch-order seed")] = 0,
    threads: Annotated[int, typer.Option(help="torch CPU threads")] = 1,
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
) -> None:
    """A small CLIP model trained on phantoms of one modality: the reward VLM `phantom:<modality>`."""
    from craft_ray.knowledge.labels import dataset_for_modality
    from craft_ray.pretrain.vlm import VLMPretrainConfig
    from craft_ray.pretrain.vlm import pretrain_vlm as run

    dataset_for_modality(modality)  # a clear error for an unknown modality, before any work
    metrics = _pretrain(
        "vlm",
        run,
        VLMPretrainConfig,
        out,
        overwrite,
        threads,
        modality=modality,
        steps=steps,
        n_train=n_train,
        n_negatives=n_negatives,
        batch_size=batch_size,
        gate_n=gate_n,
        seed=seed,
    )
    verdict = _verdict(metrics)
    console.print(
        f"phantom:{modality} -> {out}: macro AUROC {metrics['macro_auroc']:.3f}, "
        f"fidelity true > wrong for {metrics['fidelity_win_rate']:.1%} of held-out images; gate {verdict}"
    )


@app.command("diffusion")
def pretrain_diffusion(
    out: Annotated[Path, typer.Option(help="directory to write (diffusers layout, card, samples.png)")],
    n_per_modality: Annotated[int, typer.Option(help="training phantoms per modality")] = 3000,
    vae_steps: Annotated[int, typer.Option()] = 3000,
    unet_steps: Annotated[int, typer.Option()] = 8000,
    seed: Annotated[int, typer.Option(help="initialisation and batch-order seed")] = 0,
    threads: Annotated[int, typer.Option(help="torch CPU threads")] = 1,
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
) -> None:
    """The diffusion base `phantom`: all four modalities, generic (modality-only) captions."""
    from craft_ray.pretrain.diffusion import DiffusionPretrainConfig
    from craft_ray.pretrain.diffusion import pretrain_diffusion as run

    metrics = _pretrain(
        "diffusion",
        run,
        DiffusionPretrainConfig,
        out,
        overwrite,
        threads,
        n_per_modality=n_per_modality,
        vae_steps=vae_steps,
        unet_steps=unet_steps,
        seed=seed,
    )
    verdict = _verdict(metrics)
    console.print(
        f"phantom diffusion base -> {out}: modality accuracy of samples {metrics['modality_accuracy']:.2f} "
        f"(look at {out / 'samples.png'}); gate {verdict}"
    )


@app.command("classifier")
def pretrain_classifier(
    modality: Annotated[str, typer.Option(help="chest | derm | fundus | histo")],
    out: Annotated[Path, typer.Option(help="directory to write (weights, classifier.json, card)")],
    n_train: Annotated[int, typer.Option(help="training phantoms of the modality")] = 4000,
    data_seed: Annotated[
        int,
        typer.Option(
            help="phantom seed of the training data: 300 for the out-of-family evaluator (phantom:<modality>), "
            "500 for a reward classifier (phantom-reward:<modality>, the positive control); never the "
            "reward VLM's (200, 201), the evaluation VLM's (400), the demo's (0) or the gates' (999)"
        ),
    ] = 300,
    epochs: Annotated[int, typer.Option()] = 10,
    gate_n: Annotated[int, typer.Option(help="held-out phantoms (seed 999) for the gate")] = 400,
    seed: Annotated[int, typer.Option(help="initialisation and batch-order seed")] = 0,
    threads: Annotated[int, typer.Option(help="torch CPU threads")] = 1,
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
) -> None:
    """The out-of-family evaluator `phantom:<modality>` (`evaluation.classifier: phantom`): a CNN
    trained on phantom ground truth of its own seed, never the reward VLM's data."""
    from craft_ray.knowledge.labels import dataset_for_modality
    from craft_ray.pretrain.classifier import ClassifierPretrainConfig
    from craft_ray.pretrain.classifier import pretrain_classifier as run

    dataset_for_modality(modality)
    metrics = _pretrain(
        "classifier",
        run,
        ClassifierPretrainConfig,
        out,
        overwrite,
        threads,
        modality=modality,
        n_train=n_train,
        data_seed=data_seed,
        epochs=epochs,
        gate_n=gate_n,
        seed=seed,
    )
    verdict = _verdict(metrics)
    per_label = ", ".join(f"{k} {v:.3f}" for k, v in metrics["auroc"].items())
    console.print(
        f"phantom:{modality} classifier -> {out}: held-out AUROC per label {per_label}; "
        f"accuracy {metrics['accuracy']:.3f}; gate {verdict}"
    )
