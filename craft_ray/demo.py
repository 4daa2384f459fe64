"""The offline end-to-end demo (`craft demo`, `make demo`): phantom data for the four modalities,
CAS calibration on real (phantom) chest images, and a short CRAFT run with 2 Ray Train workers.

Everything is built in code or generated: no hub downloads. Re-running reuses what exists
(datasets, calibration) and continues the training run rather than overwriting it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from craft_ray.cas import Calibration, EvaluatorSpec, calibrate
from craft_ray.config import ExperimentConfig, load_config
from craft_ray.data import read_manifest
from craft_ray.data.phantoms import GENERATORS, make_phantom_dataset
from craft_ray.data.schema import MANIFEST_NAME, Manifest
from craft_ray.train.trainer import TrainingSummary, run_exists, run_training

EXPERIMENT = Path(__file__).resolve().parents[1] / "experiments" / "chexpert" / "craft.yaml"


@dataclass
class DemoOutputs:
    manifests: dict[str, Manifest]
    calibration: Calibration
    calibration_path: Path
    training: TrainingSummary


def demo_config(out: Path, steps: int, workers: int, calibration: Path) -> ExperimentConfig:
    return load_config(
        EXPERIMENT,
        {
            "name": "demo-chexpert-craft",
            "dataset.uri": str(out / "data" / "chest"),
            "reward.calibration": str(calibration),
            "training.steps": steps,
            "training.sampler_steps": 10,
            "training.checkpoint_every": max(1, steps // 2),
            "training.report_every": max(1, steps // 4),
            "scaling.workers": workers,
            "storage.path": str(out / "runs"),
        },
    )


def run_demo(
    out: Path,
    n: int = 400,
    size: int = 64,
    seed: int = 0,
    steps: int = 8,
    workers: int = 2,
    progress: Callable[[str], Callable[[int, int], None]] | None = None,
    on_report: Callable[[dict[str, Any]], None] | None = None,
) -> DemoOutputs:
    manifests = {}
    for modality in GENERATORS:
        target = out / "data" / modality
        if (target / MANIFEST_NAME).exists():
            manifests[modality] = read_manifest(str(target))
        else:
            manifests[modality] = make_phantom_dataset(
                modality,
                n,
                target,
                size,
                seed,
                progress=progress(f"phantom {modality}") if progress else None,
            )

    calibration_path = out / "cas" / "chest_thresholds.json"
    if calibration_path.exists():
        calibration = Calibration.load(calibration_path)
    else:
        cfg = load_config(EXPERIMENT, {"dataset.uri": str(out / "data" / "chest")})
        spec = EvaluatorSpec.from_config(cfg, with_mllm=False)
        calibration = calibrate(
            spec,
            str(out / "data" / "chest"),
            "val",
            progress=progress("calibrating CAS") if progress else None,
        )
        calibration.save(calibration_path)

    cfg = demo_config(out, steps, workers, calibration_path)
    summary = run_training(cfg, resume=run_exists(f"{cfg.storage_uri()}/{cfg.run_name}"), on_report=on_report)
    return DemoOutputs(manifests, calibration, calibration_path, summary)
