"""Joining a Ray cluster: every command that starts Ray work calls `ensure_ray` once.

Order: an explicit `--address`, then `RAY_ADDRESS` (set by `ray job submit` and by users), then a
cluster already running on this machine (`ray start` / `ray up` head node), else a new local
cluster that ends with the process. The returned sentence says which, for the command to print.
"""

from __future__ import annotations

import os


def ensure_ray(address: str | None = None, **init_kwargs) -> str:
    """Connect this process to Ray (once); returns what it did, e.g. 'joined Ray cluster at ...'."""
    import ray

    if ray.is_initialized():
        return f"using the Ray cluster this process is connected to ({_where()})"
    address = address or os.environ.get("RAY_ADDRESS")
    init_kwargs.setdefault("log_to_driver", False)
    if address:
        ray.init(address=address, **init_kwargs)
        return f"joined the Ray cluster at {address} ({_where()})"
    try:
        ray.init(address="auto", **init_kwargs)
        return f"joined the Ray cluster running on this machine ({_where()})"
    except (ConnectionError, RuntimeError, ValueError):
        ray.init(**init_kwargs)
        return f"started a local Ray cluster ({_where()}); it stops when this command ends"


def _where() -> str:
    import ray

    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    return f"{nodes} node(s), {resources.get('CPU', 0):g} CPUs" + (f", {gpus:g} GPUs" if gpus else "")
