"""The shipped configs fit cluster.yaml's node types: every experiment's Ray Train workers (and its
evaluation actors) fit the gpu_train type, every sweep spec's concurrent trials fit the gpu_train
fleet, every Serve deployment (Ray Serve LLM replicas included) fits the gpu_serve type. A config
that outgrows the cluster fails here with a message naming the config, the request and the node
type, instead of pending forever on a cluster. No Ray, no cloud: the YAMLs only."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from craft_ray.config import load_config
from craft_ray.tune.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = yaml.safe_load((ROOT / "cluster.yaml").read_text())
NODE_TYPES = CLUSTER["available_node_types"]
EXPERIMENTS = sorted(
    p
    for p in (ROOT / "experiments").glob("*/*.yaml")
    if p.parent.name not in ("datasets", "methods", "sweeps") and not p.name.startswith("_")
)  # (files starting with _ are fragments that others extend, e.g. experiments/demo/_common.yaml)


def copies(bundle: dict[str, float], node_type: str) -> int:
    """How many copies of `bundle` one node of `node_type` holds (0: it does not fit at all)."""
    resources = NODE_TYPES[node_type]["resources"]
    needs = {k: v for k, v in bundle.items() if v > 0}
    return min((math.floor(resources.get(k, 0) / v) for k, v in needs.items()), default=10**9)


def nodes(node_type: str) -> int:
    """How many nodes of a type the cluster can have: the head is one."""
    return 1 if node_type == CLUSTER["head_node_type"] else NODE_TYPES[node_type]["max_workers"]


def capacity(bundle: dict[str, float], node_type: str) -> int:
    """Copies of `bundle` the whole fleet of `node_type` holds at its largest."""
    return copies(bundle, node_type) * nodes(node_type)


def check_fits(what: str, bundle: dict[str, float], count: int, node_type: str) -> None:
    if copies(bundle, node_type) == 0:
        raise AssertionError(
            f"{what}: a bundle {bundle} does not fit one {node_type} node {NODE_TYPES[node_type]['resources']}"
        )
    if capacity(bundle, node_type) < count:
        raise AssertionError(
            f"{what}: {count} x {bundle} outgrow the {node_type} fleet "
            f"({nodes(node_type)} node(s) x {NODE_TYPES[node_type]['resources']} "
            f"hold {capacity(bundle, node_type)})"
        )


def worker_bundle(cpus: float, gpus: float, custom: dict[str, float] | None = None) -> dict[str, float]:
    return {"CPU": cpus, "GPU": gpus, **(custom or {})}


def check_experiment(path: Path) -> None:
    cfg = load_config(path)
    s = cfg.scaling
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path.name
    check_fits(
        f"{where}: scaling",
        worker_bundle(s.cpus_per_worker, s.gpus_per_worker, s.resources_per_worker),
        s.workers,
        "gpu_train",
    )
    for stage in ("generate", "score", "classify"):  # Ray Data actor pools of craft evaluate
        pool = getattr(cfg.evaluation, stage)
        bundle = worker_bundle(pool.num_cpus, pool.num_gpus or 0)
        check_fits(f"{where}: evaluation.{stage}", bundle, pool.actors or 1, "gpu_train")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_experiment_fits_the_train_nodes(path):
    check_experiment(path)


def check_sweep(path: Path) -> None:
    spec = load_spec(path, allow_placeholders=True)
    r, v = spec.resources, spec.validation
    where = path.relative_to(ROOT)
    workers = (r.workers or 1) * spec.max_concurrent_trials
    check_fits(
        f"{where}: resources x max_concurrent_trials",
        worker_bundle(r.cpus_per_worker or 1, r.gpus_per_worker or 0, r.resources_per_worker),
        workers,
        "gpu_train",
    )
    check_fits(
        f"{where}: validation task", worker_bundle(v.cpus, v.gpus), spec.max_concurrent_trials, "gpu_train"
    )
    check_fits(f"{where}: trial drivers", {"CPU": r.trial_cpus}, spec.max_concurrent_trials, "head")


@pytest.mark.parametrize(
    "path", sorted((ROOT / "experiments" / "sweeps").glob("*.yaml")), ids=lambda p: p.stem
)
def test_every_sweep_spec_fits_the_train_fleet(path):
    check_sweep(path)


def llm_bundles(llm: dict) -> list[dict[str, float]]:
    """One replica's placement bundles, as Ray Serve LLM makes them: the explicit
    placement_group_config bundles, else one {GPU: 1} per device (tensor x pipeline parallel);
    an accelerator_type adds the `accelerator_type:<X>` resource to every bundle."""
    engine = llm.get("engine_kwargs") or {}
    devices = engine.get("tensor_parallel_size", 1) * engine.get("pipeline_parallel_size", 1)
    explicit = (llm.get("placement_group_config") or {}).get("bundles")
    bundles = [dict(b) for b in explicit] if explicit else [{"GPU": 1.0} for _ in range(devices)]
    if llm.get("accelerator_type"):
        for bundle in bundles:
            bundle.setdefault(f"accelerator_type:{llm['accelerator_type']}", 0.001)
    return bundles


def replicas(deployment: dict) -> int:
    auto = deployment.get("autoscaling_config") or {}
    return int(auto.get("max_replicas") or deployment.get("num_replicas") or 1)


def serve_requests(app: dict) -> list[tuple[str, dict[str, float], int]]:
    """(what, bundle, copies at most) of every deployment of a Serve application."""
    out = []
    for d in app.get("deployments") or []:
        opts = d.get("ray_actor_options") or {}
        bundle = {"CPU": opts.get("num_cpus", 1), "GPU": opts.get("num_gpus", 0)}
        out.append((f"deployment {d['name']}", bundle, replicas(d)))
    for llm in (app.get("args") or {}).get("llm_configs") or []:
        name = llm["model_loading_config"]["model_id"]
        deployment = llm.get("deployment_config") or {}
        merged: dict[str, float] = {}
        for bundle in llm_bundles(llm):
            for key, value in bundle.items():
                merged[key] = merged.get(key, 0) + value
        out.append((f"LLM {name}", merged, replicas(deployment)))
    return out


def check_serve(path: Path) -> None:
    for app in yaml.safe_load(path.read_text())["applications"]:
        for what, bundle, count in serve_requests(app):
            check_fits(f"{path.relative_to(ROOT)}: {app['name']}: {what}", bundle, count, "gpu_serve")


@pytest.mark.parametrize("path", sorted((ROOT / "serve").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_serve_config_fits_the_serve_nodes(path):
    check_serve(path)


def test_a_config_that_outgrows_the_cluster_fails_with_a_clear_message(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text(
        f"extends: [{ROOT / 'experiments' / 'chexpert' / 'craft.yaml'}]\n"
        "scaling: {workers: 100, gpus_per_worker: 1, cpus_per_worker: 8}\n"
    )
    gpus = NODE_TYPES["gpu_train"]["resources"]["GPU"] * NODE_TYPES["gpu_train"]["max_workers"]
    assert gpus < 100
    with pytest.raises(AssertionError, match=r"big.yaml: scaling: 100 x .* outgrow the gpu_train fleet"):
        check_fits("big.yaml: scaling", worker_bundle(8, 1), load_config(big).scaling.workers, "gpu_train")
    with pytest.raises(AssertionError, match=r"does not fit one gpu_train node"):
        check_fits("wide", worker_bundle(8, 16), 1, "gpu_train")
    pinned = tmp_path / "pinned.yaml"  # workers pinned to a custom resource the train nodes lack
    pinned.write_text(
        f"extends: [{ROOT / 'experiments' / 'chexpert' / 'craft.yaml'}]\n"
        "scaling: {resources_per_worker: {serve_node: 1}}\n"
    )
    with pytest.raises(AssertionError, match=r"pinned.yaml: scaling: a bundle .*serve_node.* does not fit"):
        check_experiment(pinned)
    llm = tmp_path / "llm.yaml"
    llm.write_text(
        yaml.safe_dump(
            {
                "applications": [
                    {
                        "name": "mllm",
                        "args": {
                            "llm_configs": [
                                {
                                    "model_loading_config": {"model_id": "m"},
                                    "accelerator_type": "H100",  # no such GPU on the serve nodes
                                    "deployment_config": {"num_replicas": 1},
                                }
                            ]
                        },
                    }
                ]
            }
        )
    )
    with pytest.raises(
        AssertionError, match=r"LLM m: .*accelerator_type:H100.* does not fit one gpu_serve node"
    ):
        for app in yaml.safe_load(llm.read_text())["applications"]:
            for what, bundle, count in serve_requests(app):
                check_fits(f"llm.yaml: {what}", bundle, count, "gpu_serve")
