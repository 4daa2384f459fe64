"""The driver side of a training run: a Ray Train `TorchTrainer` around the shared loop.

`run_training(cfg)` checks the run directory (a finished or stopped run is only continued with
`resume=True`, never overwritten) and the inputs it can check without Ray (the calibration matches
the reward's evaluator), starts the trainer on the current Ray cluster, appends every report to
`<run>/metrics.jsonl` (a controller-side callback, so restarts show too), drives a progress
display, and exports the final weights to `<run>/final/`.

Failures keep the project's exit codes apart: an error the user can fix (a CraftError, also when
a worker raised it) stays one; anything else (a bug, out of memory, a lost worker group) becomes
a `TrainingFailure` whose traceback, with every worker's, is written to `<run>/error.log`.
"""

from __future__ import annotations

import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

from craft_ray.config import ExperimentConfig
from craft_ray.errors import CraftError, TrainingError, TrainingFailure
from craft_ray.raycluster import ensure_ray
from craft_ray.train.loop import FATAL_KEY, HISTORY_KEY, train_loop_per_worker
from craft_ray.train.records import append_jsonl, read_jsonl

METRICS_NAME = "metrics.jsonl"
FINAL_NAME = "final"
ERROR_LOG_NAME = "error.log"


@dataclass
class TrainingSummary:
    run_uri: str
    final_uri: str
    metrics: dict[str, Any]  # the last report
    history: list[dict[str, Any]]  # every report of every attempt, in order


def _fs(uri: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(uri)


def read_metrics(run_uri: str) -> list[dict[str, Any]]:
    return read_jsonl(run_uri, METRICS_NAME)


def run_exists(run_uri: str) -> bool:
    fs, path = _fs(run_uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return False
    entries = fs.get_file_info(pafs.FileSelector(path))
    return any(e.base_name.startswith("checkpoint_") or e.base_name == METRICS_NAME for e in entries)


def append_metrics(run_uri: str, records: list[dict[str, Any]]) -> None:
    """Append `records` to metrics.jsonl: a report costs its own lines, not the whole history."""
    append_jsonl(run_uri, METRICS_NAME, records)


def _make_recorder(run_uri: str, queue):
    from ray.train import UserCallback

    class MetricsRecorder(UserCallback):
        """Runs in the Train controller: persists every rank-0 report and forwards it for display."""

        def after_report(self, run_context, metrics, checkpoint) -> None:
            latest = dict(metrics[0])
            records = [dict(r) for r in latest.pop(HISTORY_KEY, None) or [latest]]
            record = records[-1]
            if checkpoint is not None:
                record["checkpoint_path"] = checkpoint.path
            append_metrics(run_uri, records)
            if queue is not None:
                queue.put_nowait(record)

    return MetricsRecorder()


def _export_final(src_fs: pafs.FileSystem, src: str, run_uri: str) -> str:
    """Copy the latest checkpoint's weights and model card to <run>/final (replacing an older export)."""
    fs, root = _fs(run_uri)
    final = f"{root}/{FINAL_NAME}"
    if fs.get_file_info(final).type != pafs.FileType.NotFound:
        fs.delete_dir(final)
    fs.create_dir(final, recursive=True)
    for name in ("lora", "unet", "model.json", "config.yaml"):
        info = src_fs.get_file_info(f"{src}/{name}")
        if info.type == pafs.FileType.Directory:
            fs.create_dir(f"{final}/{name}", recursive=True)
        if info.type != pafs.FileType.NotFound:
            pafs.copy_files(
                f"{src}/{name}", f"{final}/{name}", source_filesystem=src_fs, destination_filesystem=fs
            )
    return final if "://" not in run_uri else f"{run_uri}/{FINAL_NAME}"


def _root_causes(exc: BaseException) -> list[tuple[int | None, BaseException]]:
    """(rank, exception) behind a failed `fit()`: each failed worker's own exception, or the
    controller's, or the exception itself."""
    failures = getattr(exc, "worker_failures", None)
    if failures:
        # Ray wraps a worker's exception with its traceback text; `_base_exc` is the original
        causes = [(rank, getattr(err, "_base_exc", err)) for rank, err in sorted(failures.items())]
        return sorted(causes, key=lambda cause: _is_consequence(cause[1]))  # stable: first cause first
    return [(None, getattr(exc, "controller_failure", None) or exc)]


def _is_consequence(exc: BaseException) -> bool:
    """A rank that lost its peers in a collective failed because another rank did."""
    text = str(exc)
    return any(mark in text for mark in ("Connection closed by peer", "Connection reset by peer", "NCCL"))


def _write_error_log(run_uri: str, exc: BaseException) -> str:
    """The driver's traceback and every worker's, in <run>/error.log; returns its path."""
    parts = ["".join(traceback.format_exception(exc))]
    for rank, err in sorted((getattr(exc, "worker_failures", None) or {}).items()):
        parts.append(f"--- rank {rank} ---\n{err}\n")
    fs, path = _fs(run_uri)
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{ERROR_LOG_NAME}") as handle:
        handle.write("\n".join(parts).encode())
    return f"{path}/{ERROR_LOG_NAME}" if "://" not in run_uri else f"{run_uri}/{ERROR_LOG_NAME}"


def _failure(run_name: str, run_uri: str, exc: BaseException) -> Exception:
    """A user error raised on a worker stays a CraftError (exit 2); anything else is a
    TrainingFailure (exit 1) with one line here and the tracebacks in <run>/error.log."""
    causes = _root_causes(exc)
    for rank, cause in causes:
        if isinstance(cause, CraftError):
            where = f" on rank {rank}" if rank is not None else ""
            return type(cause)(f"training run '{run_name}' failed{where}: {cause}")
    rank, cause = causes[0]
    where = f" on rank {rank}" if rank is not None else ""
    first_line = (str(cause).strip().splitlines() or [""])[0]
    others = f" ({len(causes) - 1} other rank(s) failed too)" if len(causes) > 1 else ""
    log = _write_error_log(run_uri, exc)
    return TrainingFailure(
        f"training run '{run_name}' failed{where}: {type(cause).__name__}: {first_line}{others}",
        log_path=log,
    )


def preflight(cfg: ExperimentConfig) -> None:
    """The user errors that can be found before starting Ray: the dataset, the calibration (made
    with the reward's evaluator) and the checklist overlays. Workers check again."""
    from craft_ray.data import read_manifest
    from craft_ray.errors import DataError
    from craft_ray.knowledge.checklists import load_knowledge
    from craft_ray.train.context import reward_calibration
    from craft_ray.train.methods import get_method

    manifest = read_manifest(cfg.dataset.uri)
    if manifest.dataset != cfg.dataset.name:
        raise DataError(
            f"{cfg.dataset.uri} holds dataset '{manifest.dataset}', the config says '{cfg.dataset.name}'"
        )
    if get_method(cfg.method).uses_reward:
        reward_calibration(cfg)
        load_knowledge(cfg.reward.checklists)


def run_training(
    cfg: ExperimentConfig,
    resume: bool = False,
    on_report: Callable[[dict[str, Any]], None] | None = None,
    address: str | None = None,
    say: Callable[[str], None] | None = None,
) -> TrainingSummary:
    """Train (or resume) `cfg` with Ray Train on the cluster at `address` (ensure_ray's rules);
    `say` hears which cluster that is, after the run's checks passed."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Empty, Queue

    cfg = cfg.resolved()
    storage = cfg.storage_uri()
    run_uri = f"{storage.rstrip('/')}/{cfg.run_name}"
    exists = run_exists(run_uri)
    if exists and not resume:
        raise TrainingError(
            f"run '{cfg.run_name}' already exists in {storage} (its checkpoints are kept): pass --resume to continue it, "
            f"or set storage.name / --name for a new run"
        )
    if resume and not exists:
        raise TrainingError(f"nothing to resume: no run '{cfg.run_name}' in {storage}")
    preflight(cfg)

    joined = ensure_ray(address)
    if say is not None:
        say(joined)
    # num_cpus=0: the queue must fit wherever the caller runs (a Tune trial's placement group holds few CPUs)
    queue = Queue(actor_options={"num_cpus": 0}) if on_report is not None else None
    scaling = cfg.scaling
    resources = {
        "CPU": scaling.cpus_per_worker,
        **({"GPU": scaling.gpus_per_worker} if scaling.use_gpu else {}),
        **scaling.resources_per_worker,
    }
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"experiment": cfg.model_dump(mode="json"), "run_uri": run_uri},
        scaling_config=ScalingConfig(
            num_workers=scaling.workers, use_gpu=scaling.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.training.keep_checkpoints),
            failure_config=FailureConfig(max_failures=cfg.training.max_failures),
            callbacks=[_make_recorder(run_uri, queue)],
        ),
    )
    outcome: dict[str, Any] = {}

    def fit() -> None:
        try:
            outcome["result"] = trainer.fit()
        except Exception as exc:  # noqa: BLE001 - re-raised on the calling thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit, name="craft-train-fit", daemon=True)
    thread.start()
    while thread.is_alive() or (queue is not None and not queue.empty()):
        if queue is None:
            thread.join(0.5)
            continue
        try:
            on_report(queue.get(timeout=0.5))
        except Empty:
            pass
    if queue is not None:
        ray.kill(queue.actor)
    if "error" in outcome:
        raise _failure(cfg.run_name, run_uri, outcome["error"]) from None
    result = outcome["result"]
    history = read_metrics(run_uri)
    last = history[-1] if history else dict(result.metrics or {})
    if FATAL_KEY in last:
        raise TrainingError(f"training run '{cfg.run_name}' stopped: {last[FATAL_KEY]}")
    if result.checkpoint is not None:
        final = _export_final(result.checkpoint.filesystem, result.checkpoint.path, run_uri)
    else:
        final = _export_latest(cfg.run_name, run_uri)
    return TrainingSummary(run_uri, final, last, history)


def _export_latest(run_name: str, run_uri: str) -> str:
    """A resumed run that had nothing left to train reports no new checkpoint, and Ray Train does
    not know the ones of an earlier, interrupted driver: export the run's newest complete one."""
    import tempfile
    from pathlib import Path

    from craft_ray.train.session import latest_complete_checkpoint

    with tempfile.TemporaryDirectory(prefix="craft-export-") as tmp:
        latest = latest_complete_checkpoint(run_uri, Path(tmp))
        if latest is None:
            raise TrainingError(f"training run '{run_name}' finished without a checkpoint")
        return _export_final(pafs.LocalFileSystem(), str(latest), run_uri)
