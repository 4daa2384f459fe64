"""cluster.yaml is validated offline, the way `ray up` validates it, without any cloud call."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]


def load_cluster() -> dict:
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_cluster_yaml_passes_rays_own_validation():
    config = prepare_config(load_cluster())
    validate_config(config)
    types = config["available_node_types"]
    assert config["head_node_type"] == "head"
    assert types["gpu_train"]["resources"]["GPU"] >= 4 and types["gpu_train"]["resources"]["train_node"] == 1
    assert types["gpu_serve"]["resources"]["GPU"] >= 1 and types["gpu_serve"]["resources"]["serve_node"] == 1
    assert "GPU" not in types["head"]["resources"]
    assert any("[llm]" in cmd for cmd in config["setup_commands"]), "nodes must install the llm extra"


def test_the_validation_catches_a_broken_cluster_yaml():
    broken = load_cluster()
    broken["available_node_types"]["gpu_train"]["min_wokers"] = 1  # a typo
    with pytest.raises(jsonschema.ValidationError, match="min_wokers"):
        validate_config(prepare_config(broken))
    too_many = copy.deepcopy(load_cluster())
    too_many["available_node_types"]["gpu_train"]["min_workers"] = too_many["max_workers"] + 1
    with pytest.raises(ValueError, match="max_workers"):
        validate_config(prepare_config(too_many))
