"""The `craft` command line as a user runs it: subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def craft(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "craft_ray.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_help_lists_only_working_groups():
    result = craft("--help")
    assert result.returncode == 0
    for group in ("data", "config", "demo"):
        assert group in result.stdout


def test_phantom_and_summary(tmp_path):
    out = tmp_path / "chest"
    result = craft("data", "phantom", "--modality", "chest", "--n", "30", "--size", "32", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "Cardiomegaly" in result.stdout and "no inputs rejected" in result.stdout
    summary = craft("data", "summary", str(out))
    assert summary.returncode == 0 and "images" in summary.stdout


def test_convert_reports_rejects(tmp_path):
    src = tmp_path / "histo"
    (src / "ADI").mkdir(parents=True)
    (src / "ADI" / "x.tif").write_bytes(b"garbage")
    out = tmp_path / "out"
    result = craft("data", "convert", "--dataset", "histopath", "--source", str(src), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "1 input(s) rejected" in result.stdout
    assert "cannot decode image" in craft("data", "summary", str(out)).stdout


def test_user_errors_exit_2_with_one_line(tmp_path):
    result = craft(
        "data", "convert", "--dataset", "mimic", "--source", str(tmp_path), "--out", str(tmp_path / "o")
    )
    assert result.returncode == 2
    assert "unknown dataset 'mimic'" in result.stderr and "Traceback" not in result.stderr
    result = craft(
        "data", "phantom", "--modality", "chest", "--out", str(tmp_path / "p"), "--splits", "train=0.9"
    )
    assert result.returncode == 2 and "sum to 1" in result.stderr


def test_config_validate(tmp_path):
    good = craft("config", "validate", "experiments/chexpert/craft.yaml", "experiments/isic/ddpo.yaml")
    assert good.returncode == 0, good.stderr
    assert "chexpert-craft" in good.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {"name": "x", "method": "craft", "dataset": {"name": "isic", "uri": "d", "labels": ["Melanoma"]}}
        )
    )
    result = craft("config", "validate", str(bad))
    assert result.returncode == 2
    assert (
        "dataset.labels: unknown label(s) ['Melanoma']" in result.stderr and "Traceback" not in result.stderr
    )


def test_every_config_is_checked_and_reported(tmp_path, craft_in_process):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump({"name": "x", "method": "craft", "dataset": {"name": "isic", "uri": "d"}, "extra": 1})
    )
    good = str(ROOT / "experiments" / "isic" / "ddpo.yaml")
    result = craft_in_process("config", "validate", str(bad), str(tmp_path / "missing.yaml"), good)
    assert result.returncode == 2
    assert "extra: unknown key" in result.stderr and "missing.yaml: config file not found" in result.stderr
    assert "ok" in result.stdout and "isic-ddpo" in result.stdout  # checked although earlier files failed
    assert "2 of 3 config file(s) invalid" in result.stderr


def test_options_and_outputs_are_checked_before_any_work(tmp_path, craft_in_process):
    (tmp_path / "file").write_text("x")
    phantom = ["data", "phantom", "--modality", "chest", "--size", "16"]
    for args, message in [
        (["--out", str(tmp_path / "file")], "exists and is not a directory"),
        (["--out", str(tmp_path / "p"), "--n", "0"], "--n"),
        (["--out", str(tmp_path / "p"), "--n", "3"], "leave split(s) val, test empty"),
    ]:
        result = craft_in_process(*phantom, *args)
        assert result.returncode == 2 and message in result.stdout + result.stderr, result.stderr
        assert "Traceback" not in result.stderr and "0/?" not in result.stderr  # no empty progress bar
        assert not (tmp_path / "p").exists()
    config = tmp_path / "exp.yaml"
    config.write_text(
        yaml.safe_dump(
            {"extends": str(ROOT / "experiments" / "chexpert" / "craft.yaml"), "training": {"stepz": 3}}
        )
    )
    result = craft_in_process("train", "--config", str(config))
    assert result.returncode == 2 and "training.stepz: unknown key" in result.stderr
    config.write_text(yaml.safe_dump({"extends": str(ROOT / "experiments" / "chexpert" / "craft.yaml")}))
    result = craft_in_process(
        "train", "--config", str(config), "--storage", str(tmp_path / "runs"), "--resume"
    )
    assert result.returncode == 2 and "nothing to resume: no run 'chexpert-craft'" in result.stderr
    assert craft_in_process("--version").stdout.startswith("craft-ray ")


def test_a_cluster_address_nothing_answers_on_is_refused_before_ray_retries_it(tmp_path):
    """`--address host:port` with no Ray there: one line naming the address, not minutes of Ray retries."""
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens on it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from craft_ray.raycluster import ensure_ray; ensure_ray('127.0.0.1:{port}')",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
    )
    assert result.returncode != 0
    assert f"cannot join the Ray cluster at '127.0.0.1:{port}': nothing answers" in result.stderr


def test_demo_options_are_checked_before_ray_starts(tmp_path):
    result = craft("demo", "--out", str(tmp_path / "demo"), "--set", "training.stepz=3")
    assert result.returncode == 2 and "training.stepz: unknown key" in result.stderr
    assert "Ray cluster" not in result.stderr + result.stdout and not (tmp_path / "demo").exists()
