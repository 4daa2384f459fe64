"""Deploy a Serve config YAML (serve/*.yaml) from Python the way `serve run <yaml>` does, on a
chosen port: for tests and benchmarks, which must not take the default port 8000."""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from craft_ray.config import read_yaml_mapping
from craft_ray.errors import ConfigError


def read_serve_config(path: str | Path) -> dict[str, Any]:
    data = read_yaml_mapping(path, "Serve config")
    if not data.get("applications"):
        raise ConfigError(f"{path}: expected a Serve config with 'applications'")
    return data


def validate_serve_config(data: dict[str, Any]):
    """Ray Serve's own schema for `serve run` / `serve deploy` files."""
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(data)


def _proxy_up(host: str, port: int) -> bool:
    import requests

    try:
        return requests.get(f"http://{host}:{port}/-/healthz", timeout=5).status_code == 200
    except requests.RequestException:
        return False


def deploy_serve_config(
    data: dict[str, Any], port: int, host: str = "127.0.0.1", timeout_s: float = 600.0
) -> str:
    """Start Serve on host:port (in the connected Ray cluster), apply the config, wait until every
    application runs and the HTTP proxy answers; returns the base URL. Raises RuntimeError with
    Serve's message on failure. Serve keeps the port it started with: shut Serve down before
    deploying on another port."""
    from ray import serve
    from ray.serve._private import api as serve_api  # what `serve run` itself calls

    data = copy.deepcopy(data)
    data["http_options"] = {**data.get("http_options", {}), "host": host, "port": port}
    schema = validate_serve_config(data)
    client = serve_api.serve_start(
        http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location
    )
    running = client.http_config
    if (running.host, running.port) != (host, port):
        raise RuntimeError(
            f"Serve already runs on {running.host}:{running.port} in this Ray cluster; "
            f"call serve.shutdown() before deploying on {host}:{port}"
        )
    client.deploy_apps(schema)
    names = {app.name for app in schema.applications}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = serve.status().applications
        states = {name: status[name].status for name in names if name in status}
        failed = {n: status[n].message for n, s in states.items() if s in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            raise RuntimeError(f"Serve application(s) failed: {failed}")
        if (
            len(states) == len(names)
            and all(s == "RUNNING" for s in states.values())
            and _proxy_up(host, port)
        ):
            return f"http://{host}:{port}"
        time.sleep(0.5)
    raise RuntimeError(f"Serve application(s) {sorted(names)} not running after {timeout_s:.0f} s")
