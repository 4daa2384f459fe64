"""Experiment configs: every shipped YAML validates; bad ones fail naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from craft_ray.config import load_config
from craft_ray.errors import ConfigError
from craft_ray.knowledge.labels import DATASETS

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
SHIPPED = sorted(
    p for p in EXPERIMENTS.glob("*/*.yaml") if p.parent.name in DATASETS
)  # <dataset>/<method>.yaml
DEMO = sorted((EXPERIMENTS / "demo").glob("[!_]*.yaml"))  # _common.yaml is a fragment they extend


def test_every_dataset_has_every_method():
    from craft_ray.config import METHODS

    names = {(p.parent.name, p.stem) for p in SHIPPED}
    for dataset in DATASETS:
        for method in METHODS:
            assert (dataset, method) in names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_configs_validate(path):
    cfg = load_config(path)
    assert cfg.dataset.name == path.parent.name
    assert cfg.method == path.stem.split("_no_")[0].replace("craft_", "craft")
    assert cfg.name == f"{path.parent.name}-{path.stem.replace('_', '-')}"


@pytest.mark.parametrize("path", DEMO, ids=lambda p: p.stem)
def test_demo_experiments_validate(path):
    cfg = load_config(path)
    # warm.yaml is the shared warm start (a lora_sft run); every other file is named after its method
    assert cfg.method == {"warm": "lora_sft"}.get(path.stem, path.stem) and cfg.dataset.name == "chexpert"


def test_ablation_switches_take_effect():
    assert load_config(EXPERIMENTS / "isic/craft_no_enrichment.yaml").prompts.enrichment == "none"
    assert load_config(EXPERIMENTS / "isic/craft_no_lambda.yaml").training.denoise_weight == 0.0
    no_check = load_config(EXPERIMENTS / "isic/craft_no_checklist.yaml")
    assert no_check.reward.effective_weights()["checklist"] == 0.0
    assert no_check.reward.effective_weights()["anatomy"] == 0.0
    assert load_config(EXPERIMENTS / "isic/craft.yaml").training.denoise_weight == 0.1


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


BASE = {"name": "t", "method": "craft", "dataset": {"name": "chexpert", "uri": "x"}}


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"trainng": {}}, "trainng: unknown key"),
        ({"training": {"steps": "many"}}, "training.steps: Input should be a valid integer"),
        ({"training": {"lr": 1}}, "training.lr: unknown key"),
        ({"dataset": {"name": "mimic", "uri": "x"}}, "dataset.name: unknown dataset 'mimic'"),
        (
            {"dataset": {"name": "chexpert", "uri": "x", "labels": ["Pnemonia"]}},
            "unknown label(s) ['Pnemonia']",
        ),
        ({"method": "dpo"}, "method: Input should be"),
        ({"training": {"sampler_steps": 5, "backprop_steps": 6}}, "backprop_steps (K=6) must not exceed"),
        (
            {"reward": {"weights": {"pathology": 0, "checklist": 0, "anatomy": 0, "realism": 0}}},
            "at least one CAS weight",
        ),
        ({"dataset": {"name": "isic", "uri": "x", "resolution": 60}}, "multiple of 8"),
        ({"scaling": {"workers": 0}}, "scaling.workers: Input should be greater than or equal to 1"),
        ({"scaling": {"resources_per_worker": {"GPU": 1}}}, "'GPU': use cpus_per_worker / gpus_per_worker"),
        ({"scaling": {"resources_per_worker": {"train_node": -1}}}, "train_node: -1.0 must be >= 0"),
    ],
)
def test_config_errors_name_the_field_and_file(tmp_path, patch, message):
    path = write(tmp_path, {**BASE, **patch})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_missing_required_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="dataset: required field is missing"):
        load_config(write(tmp_path, {"name": "t", "method": "craft"}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_extends_merges_deeply_and_detects_cycles(tmp_path):
    (tmp_path / "a.yaml").write_text("training: {steps: 7, batch_size: 3}\n")
    (tmp_path / "b.yaml").write_text(yaml.safe_dump({"extends": "a.yaml", **BASE, "training": {"steps": 9}}))
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.training.steps, cfg.training.batch_size) == (9, 3)
    (tmp_path / "c.yaml").write_text("extends: d.yaml\n")
    (tmp_path / "d.yaml").write_text("extends: c.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "c.yaml")


def test_overrides_are_validated(tmp_path):
    path = write(tmp_path, BASE)
    assert load_config(path, {"scaling.workers": 3}).scaling.workers == 3
    with pytest.raises(ConfigError, match="scaling.workers"):
        load_config(path, {"scaling.workers": -1})
