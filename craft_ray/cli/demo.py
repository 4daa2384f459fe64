"""`craft demo`: the offline end-to-end main job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from craft_ray.cli.common import ADDRESS_HELP, console, err_console, join_ray, print_manifest, progress_bar


def demo(
    out: Annotated[Path, typer.Option(help="where the demo writes its data, calibration and runs")] = Path(
        "runs/demo"
    ),
    n: Annotated[int, typer.Option(help="phantom images per modality")] = 400,
    size: Annotated[int, typer.Option(help="image side in pixels")] = 64,
    steps: Annotated[int, typer.Option(help="CRAFT training steps")] = 8,
    workers: Annotated[int, typer.Option(help="Ray Train workers")] = 2,
    seed: Annotated[int, typer.Option()] = 0,
    address: Annotated[str | None, typer.Option(help=ADDRESS_HELP)] = None,
) -> None:
    """The offline end-to-end demo: phantom data, CAS calibration, a short CRAFT run on Ray Train."""
    from craft_ray.demo import run_demo

    join_ray(address)
    contexts: list = []

    def progress(description: str):
        bar = progress_bar(description)
        contexts.append(bar)
        return bar.__enter__()

    def close_bars() -> None:
        while contexts:
            contexts.pop().__exit__(None, None, None)

    def on_report(metrics: dict) -> None:
        close_bars()
        err_console.print(
            f"  step {metrics.get('step', 0):.0f}/{steps}: loss={metrics.get('loss', float('nan')):.4f} "
            f"reward={metrics.get('reward', float('nan')):.4f}"
        )

    result = run_demo(out, n, size, seed, steps, workers, progress=progress, on_report=on_report)
    close_bars()
    for modality, manifest in result.manifests.items():
        print_manifest(manifest, out / "data" / modality)
    cal = result.calibration
    console.print(
        f"CAS calibrated on {cal.distribution['overall']['n']} real chest images ({cal.split}): "
        f"mean {cal.distribution['overall']['mean']:.4f}; thresholds -> {result.calibration_path}"
    )
    m = result.training.metrics
    console.print(
        f"CRAFT: {m.get('step', 0):.0f} steps on {m.get('world_size', 0):.0f} Ray Train workers, "
        f"last reward {m.get('reward', float('nan')):.4f}; run {result.training.run_uri}; "
        f"LoRA (diffusers format) in {result.training.final_uri}/lora"
    )
