"""A multi-node Ray cluster on this machine, started the way README "Multi-node on one machine" says
(`ray start --head`, then `ray start --address` for each train node, custom resource `train_node`
standing in for cluster.yaml's gpu_train type), runs experiments/sweeps/multinode.yaml with `craft
sweep --address`, everything through `file://` URIs (dataset, checkpoints, Tune results). The two
trials train on different nodes; one of those nodes is killed mid-run and its trial finishes from
its last checkpoint on the spare node."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest
import yaml

from craft_ray.train.records import PLACEMENT_NAME, read_jsonl
from craft_ray.train.trainer import read_metrics

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
STEPS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cluster_processes(port: int) -> list[psutil.Process]:
    """Every process of the cluster whose GCS listens on `port` (head, raylets, workers, agents)."""
    mark = re.compile(rf"(:|gcs_server_port=){port}\b")
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if mark.search(" ".join(proc.info["cmdline"] or [])) and proc.pid != os.getpid():
            found.append(proc)
    return found


@pytest.fixture
def local_cluster(tmp_path):
    """A head (2 CPUs, no train_node) and three train nodes (2 CPUs, train_node: 1 each: one
    training worker per node, and room beside it for a trial's driver)."""
    port = free_port()
    # Ray 2.60 turns token authentication on for a new head when ~/.ray/auth_token exists (any
    # earlier ray.init() writes one): every node and client must then agree, so this cluster has
    # its own token (RAY_AUTH_TOKEN, which Ray reads before the file)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    env.pop("RAY_ADDRESS", None)
    # its own Ray temp root (short: Ray's socket paths have a length limit), so `ray start --head`
    # does not make this cluster the machine's default (/tmp/ray/ray_current_cluster) for later tests
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rmn", dir="/tmp")
    common = ["--disable-usage-stats", "--include-dashboard", "false"]
    subprocess.run(
        [RAY, "start", "--head", "--port", str(port), "--num-cpus", "2", *common], env=env, check=True
    )
    try:
        for _ in range(3):
            subprocess.run(
                [RAY, "start", "--address", f"127.0.0.1:{port}", "--num-cpus", "2"]
                + ["--resources", '{"train_node": 1}', "--disable-usage-stats"],
                env=env,
                check=True,
            )
        yield f"127.0.0.1:{port}", env
    finally:  # not `ray stop`: it would stop every Ray cluster on the machine
        procs = cluster_processes(port)
        for proc in procs:
            proc.kill()
        psutil.wait_procs(procs, timeout=30)
        shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)


def raylet_of(worker_pid: int) -> tuple[psutil.Process, str, str]:
    """The raylet (node manager) that started a Ray worker process: its node, as (process, node
    id, static resources), read off the raylet's command line."""
    proc = psutil.Process(worker_pid)
    while proc is not None and "raylet" not in proc.name():
        proc = proc.parent()
    assert proc is not None, f"no raylet above pid {worker_pid}"
    args = dict(a.removeprefix("--").split("=", 1) for a in proc.cmdline()[1:] if "=" in a)
    return proc, args["node_id"], args["static_resource_list"]


def test_sweep_on_two_nodes_survives_a_lost_node(local_cluster, phantom_root, tmp_path):
    address, env = local_cluster
    spec = yaml.safe_load((REPO / "experiments" / "sweeps" / "multinode.yaml").read_text())
    spec.update(
        experiments=str(REPO / "experiments" / "{dataset}" / "{method}.yaml"),
        storage=(tmp_path / "sweeps").as_uri(),
        dataset_overrides={"chexpert": {"dataset.uri": (phantom_root / "chest").as_uri()}},
    )
    spec["overrides"]["training.steps"] = STEPS
    spec_path = tmp_path / "multinode.yaml"
    spec_path.write_text(yaml.safe_dump(spec))
    runs = tmp_path / "sweeps" / "multinode" / "runs"
    log = tmp_path / "sweep.log"
    with log.open("w") as out:
        driver = subprocess.Popen(
            [sys.executable, "-m", "craft_ray.cli", "sweep", "--spec", str(spec_path), "--address", address],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        # both trials placed, and one of them has committed a checkpoint but not finished
        deadline = time.time() + 420
        while True:
            assert driver.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "the trials did not both start in time\n" + log.read_text()[-3000:]
            placed = {r.name: read_jsonl(str(r), PLACEMENT_NAME) for r in runs.glob("chexpert-craft-*")}
            steps = {name: [m["step"] for m in read_metrics(str(runs / name))] for name in placed}
            if len(placed) == 2 and all(placed.values()):
                victim = next((n for n, s in steps.items() if s and 2 <= max(s) < STEPS - 2), None)
                if victim is not None:
                    break
            time.sleep(0.2)
        first_nodes = {name: lines[0]["workers"][0]["node_id"] for name, lines in placed.items()}
        assert len(set(first_nodes.values())) == 2, f"both trials trained on one node: {first_nodes}"
        for name, lines in placed.items():  # each on a train node (the head has no train_node)
            _, node_id, resources = raylet_of(lines[0]["workers"][0]["pid"])
            assert node_id == first_nodes[name] and "train_node,1" in resources, resources
        node, _, _ = raylet_of(placed[victim][0]["workers"][0]["pid"])
        lost_at = max(steps[victim])
        for proc in [node, *node.children(recursive=True)]:
            proc.send_signal(signal.SIGKILL)  # the node dies with its training worker

        assert driver.wait(timeout=480) == 0, log.read_text()[-4000:]
    finally:
        if driver.poll() is None:
            driver.kill()

    table = pq.read_table(tmp_path / "sweeps" / "multinode" / "results.parquet").to_pylist()
    assert sorted(r["status"] for r in table) == ["completed", "completed"]
    lines = read_jsonl(str(runs / victim), PLACEMENT_NAME)
    assert len(lines) >= 2, lines  # a restart of the lost trial's workers
    restart = lines[-1]
    # from the last checkpoint, not step 0: at least the one committed before the kill (training
    # went on while the kill was on its way, so a later one may have been committed too)
    assert lost_at <= restart["resumed_from"] < STEPS
    assert restart["workers"][0]["node_id"] != first_nodes[victim]  # on another node
    history = read_metrics(str(runs / victim))
    assert history[-1]["step"] == STEPS and history[-1]["resumed_from"] == restart["resumed_from"]
    assert (runs / victim / "final" / "model.json").is_file()
    other = next(n for n in placed if n != victim)
    assert len(read_jsonl(str(runs / other), PLACEMENT_NAME)) == 1  # the other trial was not disturbed
