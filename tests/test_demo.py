"""The demo's experiments and its headline table (no Ray; the end-to-end run is in test_train_ray.py)."""

from __future__ import annotations

import math

import pytest

from craft_ray.config import ExperimentConfig
from craft_ray.demo import DEMO_EXPERIMENTS, DemoLayout, load_experiments
from craft_ray.demo.summary import aggregate, method_row, table_rows, wins
from craft_ray.errors import ConfigError


def test_demo_experiments_use_the_shipped_models_and_the_demo_paths(tmp_path):
    layout = DemoLayout(tmp_path)
    experiments = load_experiments(DEMO_EXPERIMENTS, layout, seed=7, overrides={"training.steps": 3})
    assert [e.method for e in experiments][0] == "craft"
    assert {e.method for e in experiments} == {"craft", "lora_sft", "pretrained"}
    for exp in experiments:
        cfg: ExperimentConfig = exp.cfg
        assert cfg.model.base == "phantom" and cfg.model.vlm == "phantom:chest"
        assert cfg.evaluation.classifier == "phantom:chest"
        assert cfg.seed == 7 and cfg.evaluation.seed == 7
        assert cfg.dataset.uri == str(tmp_path / "data" / "chexpert")
        assert cfg.storage.path == str(tmp_path / "seed-7" / "runs")
        assert cfg.reward.calibration == cfg.evaluation.calibration == str(tmp_path / "cas" / "chexpert.json")
        assert cfg.scaling.workers == 2
    by_method = {e.method: e.cfg for e in experiments}
    # the baselines are compared on equal terms: same LoRA, steps, batch and learning rate
    for key in ("steps", "batch_size", "learning_rate"):
        assert getattr(by_method["craft"].training, key) == getattr(by_method["lora_sft"].training, key)
    assert by_method["craft"].training.steps == 3 and by_method["pretrained"].training.steps == 3


def test_demo_experiments_must_name_one_craft_run(tmp_path):
    for name in ("pretrained", "lora_sft"):
        (tmp_path / f"{name}.yaml").write_text((DEMO_EXPERIMENTS / f"{name}.yaml").read_text())
    (tmp_path / "_common.yaml").write_text(
        (DEMO_EXPERIMENTS / "_common.yaml").read_text().replace("../", f"{DEMO_EXPERIMENTS.parent}/")
    )
    with pytest.raises(ConfigError, match="exactly one 'craft'"):
        load_experiments(tmp_path, DemoLayout(tmp_path / "out"), seed=0)
    with pytest.raises(ConfigError, match="no such experiments directory"):
        load_experiments(tmp_path / "nope", DemoLayout(tmp_path / "out"), seed=0)


def _metrics(cas: float, tail: float, auroc: float, acc: float) -> dict:
    dims = {
        d: {"mean": cas + k / 100} for k, d in enumerate(("pathology", "checklist", "anatomy", "realism"))
    }
    return {
        "cas": {"overall": {"cas": {"mean": cas}, **dims}},
        "tail": {"overall": {"share": tail}},
        "out_of_family": {"auroc": {"macro": auroc}, "accuracy": {"mean": acc}},
        "downstream": {"generated": {"macro": 0.7}},
    }


def test_headline_rows_aggregate_over_seeds_with_sample_sd():
    per_seed = {
        0: {
            "craft": method_row(_metrics(0.6, 0.10, 0.8, 0.7)),
            "lora_sft": method_row(_metrics(0.5, 0.2, 0.7, 0.6)),
        },
        1: {
            "craft": method_row(_metrics(0.7, 0.30, 0.6, 0.8)),
            "lora_sft": method_row(_metrics(0.5, 0.2, 0.7, 0.6)),
        },
    }
    assert per_seed[0]["craft"]["realism"] == pytest.approx(0.63)
    summary = aggregate(per_seed)
    cas = summary["craft"]["cas"]
    assert cas["mean"] == pytest.approx(0.65) and cas["sd"] == pytest.approx(math.sqrt(0.005))  # ddof 1
    assert summary["lora_sft"]["tail_share"]["sd"] == pytest.approx(0.0)
    counts = wins(per_seed, "craft", "lora_sft")
    # higher is better for CAS and the classifier, lower for the tail share
    assert counts["cas"] == "2/2" and counts["tail_share"] == "1/2" and counts["oof_auroc"] == "1/2"
    heading, rows = table_rows(summary, ["craft", "lora_sft"])
    assert heading[0] == "method" and rows[0][0] == "craft"
    assert rows[0][heading.index("CAS")] == "0.650 ± 0.071"
    assert rows[0][heading.index("tail share")] == "20.0 ± 14.1 %"
