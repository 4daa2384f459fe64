"""The one training loop every method shares (one Ray Train worker, or a plain process).

Per step: the method plans the step's optimiser updates, each a list of micro-batches (under the
same autocast as the losses, so DDPO's sampling-time log-probabilities match the re-scored ones).
Each micro-batch's loss is back-propagated locally. Before any gradient crosses ranks, all ranks
agree whether the update is usable (one all-reduced status: no error and everything finite
everywhere); only then are the gradients averaged, clipped and applied. Whatever fails on one rank,
every rank makes the same collective calls in the same order, so a failure never hangs the others.

Skipped updates are counted by kind: `skipped_nonfinite` (NaN/Inf loss, gradients or pixels) and
`skipped_errors` (e.g. a remote MLLM that stayed unavailable after its retries);
`training.max_nonfinite_steps` / `training.max_error_steps` of them in a row stop the run with an
error naming the step. Every `checkpoint_every` steps rank 0 writes a checkpoint (after checking
that the frozen weights did not move) and all ranks report; on (re)start the loop resumes from the
latest checkpoint.
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.optimization import get_scheduler

from craft_ray.config import ExperimentConfig
from craft_ray.errors import CraftError, EndpointError, ScoringError, TrainingError
from craft_ray.models.diffusion import build_diffusion
from craft_ray.train.checkpoint import read_method_state, restore_checkpoint, warm_start, write_checkpoint
from craft_ray.train.context import TrainContext, build_evaluator_for, derive_seed
from craft_ray.train.guards import FrozenFingerprint
from craft_ray.train.methods import Method, get_method
from craft_ray.train.precision import Precision
from craft_ray.train.records import record_placement
from craft_ray.train.session import TrainSession, scratch_dir

FATAL_KEY = "fatal_error"
HISTORY_KEY = "history"

# Update status, agreed across ranks by an all-reduced max: any failure anywhere skips everywhere.
OK, ERROR, NONFINITE = 0, 1, 2
SKIP_COUNTERS = {ERROR: "skipped_errors", NONFINITE: "skipped_nonfinite"}


def _status_of(exc: CraftError) -> int:
    """NaN or Inf pixels reaching the reward mean the model diverged; anything else is an error."""
    return NONFINITE if isinstance(exc, ScoringError) else ERROR


def _inject_failure(cfg: ExperimentConfig, session: TrainSession, step: int, run_uri: str | None) -> None:
    """debug.fail_at_step: the chosen rank dies once (a marker in the run directory records it)."""
    if cfg.debug.fail_at_step != step or session.rank != cfg.debug.fail_rank or run_uri is None:
        return
    import pyarrow.fs as pafs

    fs, root = pafs.FileSystem.from_uri(run_uri)
    marker = f"{root}/.fault_injected_step_{step}"
    if fs.get_file_info(marker).type == pafs.FileType.NotFound:
        fs.create_dir(root, recursive=True)
        with fs.open_output_stream(marker) as handle:
            handle.write(b"injected\n")
        os._exit(1)


def _inject_error(cfg: ExperimentConfig, session: TrainSession, step: int, where: str) -> None:
    """debug.raise_in_{plan,loss}_steps: rank `debug.raise_rank` fails as a dead MLLM endpoint would."""
    steps = cfg.debug.raise_in_plan_steps if where == "plan" else cfg.debug.raise_in_loss_steps
    if step in steps and session.rank == cfg.debug.raise_rank:
        raise EndpointError(f"debug: injected endpoint failure in {where} at step {step}")


@dataclass
class UpdateResult:
    status: int
    loss: float
    grad_norm: float
    metrics: dict[str, list[float]]


@dataclass
class Streaks:
    """Skipped updates in a row, per kind, and the last error message (for the stop message)."""

    counts: dict[int, int] = field(default_factory=lambda: {ERROR: 0, NONFINITE: 0})
    last_error: str | None = None

    def record(self, status: int) -> None:
        for kind in self.counts:
            self.counts[kind] = self.counts[kind] + 1 if kind == status else 0


class TrainingRun:
    """One worker's training state: models, optimiser, counters; `step()` runs one training step."""

    def __init__(self, cfg: ExperimentConfig, session: TrainSession, run_uri: str | None):
        torch.manual_seed(derive_seed(cfg.seed, session.rank, 99))
        self.cfg, self.session, self.run_uri = cfg, session, run_uri
        self.method: Method = get_method(cfg.method)
        components = build_diffusion(cfg.model.base, cfg.model.revision).freeze()
        self.trainable = self.method.trainable_parameters(components, cfg)
        if cfg.model.init_lora and self.method.adapter == "lora":
            warm_start(components.unet, cfg.model.init_lora)  # a resumed run overrides it with its checkpoint
        components.to(session.device)
        unet = session.prepare_model(components.unet) if self.trainable else components.unet
        evaluator = (
            build_evaluator_for(cfg, session.device, self.method.reward_with_mllm)
            if self.method.uses_reward
            else None
        )
        self.ctx = TrainContext(cfg, session, components, unet, self.trainable, evaluator=evaluator)
        self.method.setup(self.ctx)
        self.precision = Precision.setup(self.ctx, self.method, self.trainable)  # dtype, layout, compile
        self.ctx.loss_scale = self.precision.current_scale
        self.frozen = FrozenFingerprint(components.unet)
        t = cfg.training
        self.optimizer = (
            torch.optim.AdamW(self.trainable, lr=t.learning_rate, weight_decay=t.weight_decay)
            if self.trainable
            else None
        )
        self.lr_scheduler = (
            get_scheduler("constant_with_warmup", self.optimizer, num_warmup_steps=t.warmup_steps)
            if self.optimizer
            else None
        )
        self.counters = {"skipped_steps": 0.0, "skipped_nonfinite": 0.0, "skipped_errors": 0.0}
        self.streaks = Streaks()
        self.pending: list[dict[str, Any]] = []  # per-step records since the last report
        self.n_updates = self.method.updates_per_step(cfg)

    # -- collectives: every rank calls these in the same order ---------------------------------
    def agree(self, status: int) -> int:
        flag = torch.tensor([float(status)], device=self.session.device)
        return int(self.session.all_reduce(flag, "max").item())

    def mean_across_ranks(self, values: dict[str, list[float]]) -> dict[str, float]:
        """Mean of each metric over every value any rank recorded (ranks may miss some keys)."""
        merged: dict[str, list[float]] = defaultdict(list)
        for rank_values in self.session.all_gather_object(dict(values)):
            for key, vals in rank_values.items():
                merged[key].extend(vals)
        return {key: sum(vals) / len(vals) for key, vals in merged.items() if vals}

    # -- one step ------------------------------------------------------------------------------
    def note(self, status: int, message: str) -> int:
        self.streaks.last_error = message
        print(f"[rank {self.session.rank}] skipping {message}", file=sys.stderr, flush=True)
        return status

    def plan(self, step: int):
        """The method's plan for the step, or (None, status) when it failed on this rank."""
        try:
            _inject_error(self.cfg, self.session, step + 1, "plan")
            with self.ctx.autocast():
                plan = self.method.plan(self.ctx, step)
        except CraftError as exc:
            return None, self.note(_status_of(exc), f"step {step + 1}: {exc}")
        if len(plan.updates) != self.n_updates:
            raise TrainingError(
                f"{self.method.name} planned {len(plan.updates)} updates, expected {self.n_updates}"
            )
        return plan, OK

    def micro_batch(self, micro: Any, step: int, index: int, n_micro: int) -> tuple[int, float, dict]:
        """Forward and local backward of one micro-batch: (status, loss, metrics)."""
        cfg, completed = self.cfg, step + 1
        try:
            if index == 0:
                _inject_error(cfg, self.session, completed, "loss")
            with self.ctx.autocast():
                loss, metrics = self.method.loss(self.ctx, micro, step, index)
            if completed in cfg.debug.nonfinite_steps and self.session.rank == 0:
                loss = loss * float("nan")
        except CraftError as exc:  # e.g. the reward met NaN pixels, or the MLLM endpoint stayed down
            return self.note(_status_of(exc), f"step {completed}: {exc}"), float("nan"), {}
        if not torch.isfinite(loss.detach()):
            return NONFINITE, float("nan"), {}
        self.precision.scale(loss / n_micro).backward()  # local only: averaged once all ranks agree
        return OK, float(loss.detach()), metrics

    def update(self, micro_batches: list[Any], step: int, first_index: int) -> UpdateResult:
        """One optimiser update: local micro-batches, agreement, then average, clip and step (or skip)."""
        status, losses, metrics = OK, [], defaultdict(list)
        for position, micro in enumerate(micro_batches):
            if status != OK:
                break  # this rank's update is lost; the others learn it at the agreement below
            status, loss, micro_metrics = self.micro_batch(
                micro, step, first_index + position, len(micro_batches)
            )
            losses.append(loss)
            for key, value in micro_metrics.items():
                metrics[key].append(float(value))
        self.precision.unscale_(self.trainable)  # fp16 loss scaling; a no-op otherwise
        if status == OK and not all(
            torch.isfinite(p.grad).all() for p in self.trainable if p.grad is not None
        ):
            status = NONFINITE
        status = self.agree(status)
        self.precision.update_scale(overflow=status == NONFINITE)
        if status != OK:
            self.optimizer.zero_grad(set_to_none=True)
            return self.skip_update(status, metrics)
        self.streaks.record(OK)
        self.session.average_gradients(self.trainable)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.trainable, self.cfg.training.max_grad_norm))
        self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return UpdateResult(OK, sum(losses) / len(losses), grad_norm, metrics)

    def step(self, step: int) -> dict[str, Any]:
        """Plan, agree the plan worked everywhere, run the updates; returns the step's metrics."""
        started = time.perf_counter()
        plan, status = self.plan(step)
        status = self.agree(status)
        values: dict[str, list[float]] = defaultdict(list)
        if status != OK:  # a failed plan skips all the step's updates, on every rank
            results = [self.skip_update(status) for _ in range(self.n_updates)]
        else:
            for key, value in plan.metrics.items():
                values[key].append(float(value))
            results, index = [], 0
            for micro_batches in plan.updates:
                results.append(self.update(micro_batches, step, index))
                index += len(micro_batches)
        for result in results:
            values["loss"].append(result.loss)  # NaN for a skipped update
            for key, vals in result.metrics.items():
                values[key].extend(vals)
        metrics = self.mean_across_ranks(values)
        self.method.end_step(metrics)
        metrics.update(
            grad_norm=sum(r.grad_norm for r in results) / len(results),
            step=float(step + 1),
            lr=float(self.lr_scheduler.get_last_lr()[0]),
            step_time_s=time.perf_counter() - started,
            timestamp=time.time(),
            **self.counters,
            **self.precision.metrics(),
        )
        return metrics

    def skip_update(self, status: int, metrics: dict[str, list[float]] | None = None) -> UpdateResult:
        """Count a skipped update (in total and by kind); the weights stay as they were."""
        self.streaks.record(status)
        self.counters["skipped_steps"] += 1
        self.counters[SKIP_COUNTERS[status]] += 1
        return UpdateResult(status, float("nan"), float("nan"), metrics or {})

    def stop_reason(self, completed: int) -> str | None:
        """Why the run must stop after this step (too many skipped updates in a row), if it must."""
        t = self.cfg.training
        limits = {
            NONFINITE: (
                t.max_nonfinite_steps,
                "non-finite",
                "training.max_nonfinite_steps",
                "Lower the learning rate or check the reward.",
            ),
            ERROR: (
                t.max_error_steps,
                "failed (errors)",
                "training.max_error_steps",
                "Check the MLLM endpoint and the reward configuration.",
            ),
        }
        for kind, (limit, what, field_name, hint) in limits.items():
            count = self.streaks.counts[kind]
            if count > limit:
                last = f" Last error: {self.streaks.last_error}" if self.streaks.last_error else ""
                return (
                    f"step {completed}: {count} {what} updates in a row (limit {field_name}={limit}); "
                    f"the last finite checkpoint is kept. {hint}{last}"
                )
        return None

    # -- reporting and checkpoints ---------------------------------------------------------------
    def report(self, metrics: dict[str, Any], step: int, with_checkpoint: bool) -> None:
        """Send the latest metrics with every step's record since the last report (`history`)."""
        bundle = {**metrics, HISTORY_KEY: [*self.pending, metrics]}
        self.pending.clear()
        if not with_checkpoint:
            self.session.report(bundle, None, None)
            return
        if self.session.rank == 0:
            moved = self.frozen.changed(self.ctx.components.unet)
            if moved:
                raise TrainingError(
                    f"step {step}: frozen base weights changed ({len(moved)} tensor(s), e.g. {moved[0]}); "
                    "refusing to checkpoint"
                )
        with scratch_dir() as tmp:
            if self.session.rank == 0:
                write_checkpoint(
                    tmp,
                    self.cfg,
                    self.method.adapter,
                    self.ctx.unet,
                    self.optimizer,
                    self.lr_scheduler,
                    step,
                    self.counters,
                    self.method.state_dict(),
                )
            self.session.report(bundle, tmp if self.session.rank == 0 else None, f"checkpoint_{step:06d}")

    def after_step(self, metrics: dict[str, Any], completed: int) -> bool:
        """Report and checkpoint as configured; False when the run must stop."""
        t = self.cfg.training
        fatal = self.stop_reason(completed)
        if fatal:
            metrics[FATAL_KEY] = fatal
            self.report(metrics, completed, with_checkpoint=False)
            return False
        with_checkpoint = completed % t.checkpoint_every == 0 or completed == t.steps
        metrics["checkpoint"] = float(with_checkpoint)
        if with_checkpoint or completed % t.report_every == 0:
            self.report(metrics, completed, with_checkpoint)
        else:
            self.pending.append(metrics)
        return True


def train_loop(cfg: ExperimentConfig, session: TrainSession, run_uri: str | None = None) -> dict[str, Any]:
    """Run (or resume) training to `cfg.training.steps`; returns the last metrics reported."""
    run = TrainingRun(cfg, session, run_uri)
    start = 0
    with session.checkpoint_to_resume() as directory:
        if directory is not None:
            start, counters = restore_checkpoint(
                directory, run.method.adapter, run.ctx.unet, run.optimizer, run.lr_scheduler
            )
            run.counters.update(counters)
            run.method.load_state_dict(read_method_state(directory))
    record_placement(session, run_uri, start)
    base_metrics = {"resumed_from": float(start), "world_size": float(session.world_size)}
    if not run.trainable or start >= cfg.training.steps:
        final = {"step": float(start), **run.counters, **base_metrics, "checkpoint": 1.0}
        run.report(final, start, with_checkpoint=directory is None)  # nothing new to train: keep the latest
        return final
    metrics: dict[str, Any] = {}
    for step in range(start, cfg.training.steps):
        _inject_failure(cfg, session, step + 1, run_uri)
        metrics = {**run.step(step), **base_metrics}
        if not run.after_step(metrics, step + 1):
            break
    return metrics


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (runs on every worker)."""
    from craft_ray.config import validate_config
    from craft_ray.train.session import RaySession

    cfg = validate_config(config["experiment"], source="train_loop_config")
    train_loop(cfg, RaySession(config["run_uri"]), config["run_uri"])
