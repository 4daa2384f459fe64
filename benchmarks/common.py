"""Shared helpers for the benchmark scripts: pinning to one core and printing a result table."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ALL_CORES = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()


def single_threaded_math() -> None:
    """Single-threaded BLAS/OpenMP (call before importing numpy/torch)."""
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"


def use_cores(n: int | None) -> None:
    """Restrict this process to its first n cores (None: all it started with)."""
    if ALL_CORES:
        os.sched_setaffinity(0, set(sorted(ALL_CORES)[:n]) if n else ALL_CORES)


def machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def timed(fn: Callable[[], Any], repeat: int = 3) -> float:
    """Best wall time of `repeat` runs, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def report(title: str, columns: list[str], rows: list[list[Any]], json_path: str | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{title}\n[dim]{machine()}")
    for col in columns:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*[f"{v:.3g}" if isinstance(v, float) else str(v) for v in row])
    Console().print(table)
    if json_path:
        Path(json_path).write_text(json.dumps({"title": title, "columns": columns, "rows": rows}, indent=2))
