"""CAS evaluator service throughput and latency over HTTP: batching on vs off (max_batch_size=1),
at several client concurrencies, in one run on a local Ray cluster.

python benchmarks/bench_serve.py [--concurrency 1,4,16] [--requests 240] [--batch 16] [--vlm tiny]
                                 [--mllm tiny] [--size 64] [--json out.json]

Each request carries one 64 px chest image; requests from concurrent clients are what
`@serve.batch` groups. Latency is per request, client side (p50 / p99).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import local

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def images(n: int, size: int) -> list[str]:
    import base64

    import numpy as np

    from craft_ray.data.images import encode_png

    rng = np.random.default_rng(0)
    return [
        base64.b64encode(encode_png(rng.integers(0, 256, (size, size), dtype=np.uint8))).decode()
        for _ in range(n)
    ]


def drive(url: str, payloads: list[str] | None, concurrency: int, n: int) -> tuple[float, list[float]]:
    """n requests from `concurrency` client threads; returns (wall seconds, latencies in s).
    payloads=None: GET /healthz instead of scoring (what HTTP and Serve alone cost)."""
    import requests

    state = local()

    def one(i: int) -> float:
        if not hasattr(state, "session"):
            state.session = requests.Session()
        start = time.perf_counter()
        if payloads is None:
            resp = state.session.get(url + "/healthz", timeout=300)
        else:
            item = {"image": payloads[i % len(payloads)], "labels": ["Cardiomegaly"]}
            resp = state.session.post(
                url + "/v1/cas", json={"dataset": "chexpert", "items": [item]}, timeout=300
            )
        resp.raise_for_status()
        return time.perf_counter() - start

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(2 * concurrency)))  # warm-up: connections, text-embedding caches
        start = time.perf_counter()
        latencies = list(pool.map(one, range(n)))
    return time.perf_counter() - start, latencies


def serve_evaluator(batch: int, vlm: str, mllm: str | None, port: int) -> str:
    from craft_ray.serving.deploy import deploy_serve_config, read_serve_config

    config = read_serve_config(ROOT / "serve/evaluator.yaml")
    args = config["applications"][0]["args"]
    args["datasets"] = {"chexpert": {"vlm": vlm, "mllm": mllm}}
    args["batching"] = {"max_batch_size": batch, "batch_wait_timeout_s": 0.01 if batch > 1 else 0.0}
    args["auth"] = "none"
    return deploy_serve_config(config, port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--concurrency", default="1,4,16")
    parser.add_argument("--requests", type=int, default=240, help="timed requests per concurrency")
    parser.add_argument("--batch", type=int, default=16, help="max_batch_size with batching on")
    parser.add_argument("--vlm", default="tiny")
    parser.add_argument("--mllm", default=None, help="checklist VQA model of the evaluation path (e.g. tiny)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import numpy as np
    import ray
    from ray import serve

    ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False)
    payloads = images(16, args.size)
    levels = [int(c) for c in args.concurrency.split(",")]
    results: dict[tuple[int, int], tuple[float, float, float]] = {}
    port = free_port()
    try:
        for batch in (args.batch, 1):
            url = serve_evaluator(batch, args.vlm, args.mllm, port)
            if batch == 1:
                for c in levels:
                    wall, _ = drive(url, None, c, args.requests)
                    results[(0, c)] = (args.requests / wall, 0.0, 0.0)
            for c in levels:
                wall, lat = drive(url, payloads, c, args.requests)
                results[(batch, c)] = (
                    args.requests / wall,
                    1000 * np.percentile(lat, 50),
                    1000 * np.percentile(lat, 99),
                )
                print(
                    f"max_batch_size={batch} concurrency={c}: {results[(batch, c)][0]:.1f} images/s",
                    flush=True,
                )
            serve.delete("cas-evaluator")
    finally:
        serve.shutdown()
        ray.shutdown()
    rows = []
    for c in levels:
        on, off = results[(args.batch, c)], results[(1, c)]
        rows.append([c, on[0], on[1], on[2], off[0], off[1], off[2], on[0] / off[0], results[(0, c)][0]])
    report(
        f"CAS evaluator over HTTP: {args.vlm} VLM, MLLM {args.mllm}, {args.size} px, 1 image per request, "
        f"max_batch_size {args.batch} vs 1, {args.requests} requests per row",
        [
            "concurrency",
            "batched img/s",
            "p50 ms",
            "p99 ms",
            "unbatched img/s",
            "p50 ms",
            "p99 ms",
            "speed-up",
        ],
        rows,
        args.json,
    )


if __name__ == "__main__":
    main()
