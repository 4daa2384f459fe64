"""JSON-lines files of a run directory (a local path or a pyarrow URI): `metrics.jsonl`, written by
the Train controller, and `placement.jsonl`, written by rank 0 at every (re)start of the workers."""

from __future__ import annotations

import json
import os
import socket
import time
from typing import Any

import pyarrow.fs as pafs

PLACEMENT_NAME = "placement.jsonl"


def append_jsonl(dir_uri: str, name: str, records: list[dict[str, Any]]) -> None:
    """Append `records` to `<dir_uri>/<name>`. Object stores cannot append: there the file is read
    and written again whole (these files stay small: one line per report or restart)."""
    fs, path = pafs.FileSystem.from_uri(dir_uri)
    fs.create_dir(path, recursive=True)
    target = f"{path}/{name}"
    lines = "".join(json.dumps(r) + "\n" for r in records).encode()
    try:
        with fs.open_append_stream(target) as handle:
            handle.write(lines)
    except NotImplementedError:  # pyarrow's S3 / GCS filesystems
        before = b""
        if fs.get_file_info(target).type == pafs.FileType.File:
            with fs.open_input_stream(target) as handle:
                before = handle.read()
        with fs.open_output_stream(target) as handle:
            handle.write(before + lines)


def read_jsonl(dir_uri: str, name: str) -> list[dict[str, Any]]:
    fs, path = pafs.FileSystem.from_uri(dir_uri)
    target = f"{path}/{name}"
    if fs.get_file_info(target).type != pafs.FileType.File:
        return []
    with fs.open_input_stream(target) as handle:
        return [json.loads(line) for line in handle.read().decode().splitlines() if line.strip()]


def this_worker() -> dict[str, Any]:
    """Where this process runs: the Ray node (when inside Ray), host and pid."""
    import ray

    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    return {"node_id": node, "host": socket.gethostname(), "pid": os.getpid()}


def record_placement(session, run_uri: str | None, resumed_from: int) -> None:
    """Every rank says where it runs; rank 0 appends one line to `<run>/placement.jsonl`: which
    node each rank ran on from which step (a restart after a lost node adds a line)."""
    workers = session.all_gather_object({"rank": session.rank, **this_worker()})
    if session.rank == 0 and run_uri is not None:
        line = {"time": time.time(), "resumed_from": resumed_from, "workers": workers}
        append_jsonl(run_uri, PLACEMENT_NAME, [line])
