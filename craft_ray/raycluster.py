"""Joining a Ray cluster: every command that starts Ray work calls `ensure_ray` once.

Order: an explicit `--address`, then `RAY_ADDRESS` (set by `ray job submit`; on a cluster's head node
`export RAY_ADDRESS=auto` joins the cluster running there), else a new local cluster that ends with
the process. There is deliberately no silent "auto": Ray's auto-detection falls back to any Ray
cluster whose processes it finds on the machine, which on a shared host may be someone else's.
The returned sentence says which, for the command to print.
"""

from __future__ import annotations

import os

from craft_ray.errors import CraftError


def ensure_ray(address: str | None = None, **init_kwargs) -> str:
    """Connect this process to Ray (once); returns what it did, e.g. 'joined Ray cluster at ...'."""
    import ray

    if ray.is_initialized():
        return f"using the Ray cluster this process is connected to ({_where()})"
    address = address or os.environ.get("RAY_ADDRESS")
    init_kwargs.setdefault("log_to_driver", False)
    if address and address != "local":
        _check_reachable(address)
        try:
            ray.init(address=address, **init_kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise CraftError(f"cannot join the Ray cluster at {address!r}: {exc}") from None
        return f"joined the Ray cluster at {address} ({_where()})"
    ray.init(address="local", **init_kwargs)
    return f"started a local Ray cluster ({_where()}); it stops when this command ends"


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A `host:port` that nothing answers on is an error at once: `ray.init` would retry it for
    minutes. (`auto` and `ray://` addresses are left to Ray.)"""
    import socket

    if address == "auto" or "://" in address:
        return
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return  # Ray names the format problem itself
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise CraftError(
            f"cannot join the Ray cluster at {address!r}: nothing answers at {host}:{port} ({exc.strerror or exc})"
        ) from None


def _where() -> str:
    import ray

    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    return f"{nodes} node(s), {resources.get('CPU', 0):g} CPUs" + (f", {gpus:g} GPUs" if gpus else "")
