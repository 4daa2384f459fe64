"""Shared fixtures: dataset trees in each public layout, phantom datasets, a local Ray cluster."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a model hub
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


def write_image(path: Path, size: tuple[int, int] = (40, 32), mode: str = "L", seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8), mode).save(path)
    return path


def write_truncated_jpeg(path: Path) -> Path:
    write_image(path, (64, 64), "L")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def assert_gradient_matches_finite_differences(
    f, x, samples: int = 5, eps: float = 1e-5, seed: int = 0, abs_tol: float = 1e-9
) -> None:
    """f: float64 tensor (1, C, H, W) -> scalar. Its autograd gradient must be non-zero and agree
    with central differences at random pixels."""
    import torch

    x = x.detach().clone().requires_grad_(True)
    f(x).backward()
    grad = x.grad.clone()
    assert grad.abs().sum() > 0
    rng = np.random.default_rng(seed)
    for _ in range(samples):
        c, i, j = (int(rng.integers(0, s)) for s in x.shape[1:])
        bump = torch.zeros_like(x)
        bump[0, c, i, j] = eps
        with torch.no_grad():
            numeric = (f(x + bump) - f(x - bump)) / (2 * eps)
        assert float(numeric) == pytest.approx(float(grad[0, c, i, j]), rel=1e-4, abs=abs_tol)


def generate_chest(pipe, size: int = 32):
    """A fixed, seeded 3-step generation, for comparing model weights through their outputs."""
    import torch

    return pipe(
        "a frontal chest radiograph showing cardiomegaly",
        num_inference_steps=3,
        height=size,
        width=size,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    ).images


@pytest.fixture(scope="session")
def phantom_root(tmp_path_factory) -> Path:
    """Small phantom datasets of all four modalities, made once per test session."""
    from craft_ray.data.phantoms import GENERATORS, make_phantom_dataset

    root = tmp_path_factory.mktemp("phantoms")
    for modality in GENERATORS:
        make_phantom_dataset(modality, 48, root / modality, size=32, seed=3)
    return root


@pytest.fixture(scope="session")
def ray_local():
    """One real local Ray cluster for the whole session (Train, Tune, Data tests share it)."""
    import ray

    if not ray.is_initialized():
        # address="local": a new cluster even where `ray start` made another the machine's default
        ray.init(
            address="local", num_cpus=4, include_dashboard=False, log_to_driver=True, configure_logging=False
        )
    # `craft` subprocesses of the tests join this cluster the way users' commands join theirs
    previous = os.environ.get("RAY_ADDRESS")
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    yield ray
    if previous is None:
        os.environ.pop("RAY_ADDRESS", None)
    else:
        os.environ["RAY_ADDRESS"] = previous
    ray.shutdown()


@pytest.fixture
def craft_in_process(capsys, monkeypatch):
    """Run the `craft` command line in this process (no interpreter start-up: for the many quick
    refusals); returns a CompletedProcess with the exit status and captured output."""
    import subprocess
    import sys

    from craft_ray.cli import main

    def run(*args: str) -> subprocess.CompletedProcess:
        monkeypatch.setattr(sys, "argv", ["craft", *args])
        capsys.readouterr()
        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        out = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out.out, out.err)

    return run
