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
    parts = [
        (f"--{name}" if value else f"--no-{name}")
        if isinstance(value, bool)
        else f"--{name} {shlex.quote(str(value))}"
        for name, value in ((k.replace("_", "-"), v) for k, v in options.items())
    ]
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
    arch: Annotated[
        str,
        typer.Option(
            help="reward (the reward VLM's architecture) | eval (an independent evaluation VLM) | "
            "eval-fine80 (eval on a finer patch grid; shipped for dermoscopy's evaluation VLM)"
        ),
    ] = "reward",
    steps: Annotated[int, typer.Option(help="optimiser steps")] = 3000,
    n_train: Annotated[int, typer.Option(help="training phantoms of the modality")] = 20000,
    n_negatives: Annotated[
        int, typer.Option(help="images per negative kind: each other modality, distractors, corruptions")
    ] = 1000,
    data_seed: Annotated[
        int | None,
        typer.Option(
            help="phantom seed of the training data (default: reward 200, eval and eval-fine80 400; "
            "never another role's: 0, 300, 999, the other VLM's, or the seed just below one)"
        ),
    ] = None,
    implausible: Annotated[
        float, typer.Option(help="share of implausible training phantoms (anatomy/realism items false)")
    ] = 0.2,
    augment: Annotated[
        bool, typer.Option(help="random shifts, rotations, blur and noise (never flips: laterality matters)")
    ] = False,
    adversarial_eps: Annotated[
        float, typer.Option(help="adversarial training: L-inf radius in pixel units, e.g. 0.008 (0: off)")
    ] = 0.0,
    adversarial_steps: Annotated[int, typer.Option(help="1: FGSM; more: PGD steps")] = 1,
    batch_size: Annotated[int, typer.Option()] = 64,
    gate_n: Annotated[int, typer.Option(help="held-out phantoms (seed 999) for the gate")] = 400,
    seed: Annotated[int, typer.Option(help="initialisation, batch-order and augmentation seed")] = 0,
    threads: Annotated[int, typer.Option(help="torch CPU threads")] = 1,
    overwrite: Annotated[bool, typer.Option(help="replace a non-empty --out")] = False,
) -> None:
    """A small CLIP model trained on phantoms of one modality, its labels, checklist items and
    implausible images: the reward VLM `phantom:<modality>`, or with --arch eval (eval-fine80 for
    derm) the evaluation VLM `phantom-eval:<modality>`."""
    from pydantic import ValidationError

    from craft_ray.errors import ConfigError
    from craft_ray.knowledge.labels import dataset_for_modality
    from craft_ray.pretrain.augment import Augment
    from craft_ray.pretrain.vlm import ARCH_PRESETS, DATA_SEEDS, VLMPretrainConfig, vlm_family
    from craft_ray.pretrain.vlm import pretrain_vlm as run

    dataset_for_modality(modality)  # a clear error for an unknown modality, before any work
    if arch not in ARCH_PRESETS:
        raise ConfigError(f"--arch must be one of {', '.join(ARCH_PRESETS)}, got {arch!r}")
    data_seed = DATA_SEEDS[arch] if data_seed is None else data_seed
    settings = dict(
        steps=steps,
        n_train=n_train,
        n_negatives=n_negatives,
        data_seed=data_seed,
        implausible=implausible,
        adversarial_eps=adversarial_eps,
        adversarial_steps=adversarial_steps,
        batch_size=batch_size,
        gate_n=gate_n,
        seed=seed,
    )
    try:  # every option checked before the output directory is touched
        VLMPretrainConfig.from_preset(arch, modality=modality, **settings)
    except ValidationError as exc:
        first = exc.errors()[0]
        # an error without a field is the model-level check, the seed plan across roles
        option = "--" + "-".join(str(p) for p in first["loc"] or ["data_seed"]).replace("_", "-")
        raise ConfigError(f"{option}: {first['msg'].removeprefix('Value error, ')}") from None

    def make_config(arch: str, augment: bool, **rest) -> VLMPretrainConfig:
        return VLMPretrainConfig.from_preset(arch, augment=Augment() if augment else None, **rest)

    metrics = _pretrain(
        "vlm",
        run,
        make_config,
        out,
        overwrite,
        threads,
        modality=modality,
        arch=arch,
        augment=augment,
        **settings,
    )
    verdict = _verdict(metrics)
    items = metrics.get("item_gate", {})
    console.print(
        f"{vlm_family(arch)}:{modality} ({arch}) -> {out}: macro AUROC {metrics['macro_auroc']:.3f}, "
        f"fidelity true > wrong for {metrics['fidelity_win_rate']:.1%} of held-out images; "
        f"item AUROC min {items.get('item_auroc_min', float('nan')):.3f} over {items.get('items_drawn', 0)} "
        f"drawn items, plausibility AUROC {items.get('plausibility_auroc', float('nan')):.3f}; gate {verdict}"
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
