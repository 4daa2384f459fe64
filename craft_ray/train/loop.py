"""The one training loop every method shares (one Ray Train worker, or a plain process).

Per step: the method plans one or more optimiser updates, each of micro-batches; each loss is
back-propagated (DDP synchronises on an update's last micro-batch); all ranks agree whether the
update was finite; a finite update is clipped and applied, a non-finite one is skipped and
counted, and too many in a row stop the run with a clear error.
Every `checkpoint_every` steps rank 0 writes a checkpoint (after checking the frozen weights did
not move) and all ranks report; on (re)start the loop resumes from the latest checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections import defaultdict
from typing import Any

import torch
from diffusers.optimization import get_scheduler

from craft_ray.config import ExperimentConfig
from craft_ray.errors import CraftError, TrainingError
from craft_ray.models.diffusion import build_diffusion
from craft_ray.train.checkpoint import restore_checkpoint, write_checkpoint
from craft_ray.train.context import TrainContext, build_evaluator_for, derive_seed
from craft_ray.train.methods import get_method
from craft_ray.train.session import TrainSession, scratch_dir

FATAL_KEY = "fatal_error"
HISTORY_KEY = "history"


def frozen_checksum(module: torch.nn.Module) -> float:
    with torch.no_grad():
        return float(sum(p.double().abs().sum() for p in module.parameters() if not p.requires_grad))


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


def _mean_across_ranks(
    session: TrainSession, values: dict[str, float], device: torch.device
) -> dict[str, float]:
    keys = sorted(values)
    tensor = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    tensor = session.all_reduce(tensor, "sum") / session.world_size
    return dict(zip(keys, tensor.tolist(), strict=True))


def train_loop(cfg: ExperimentConfig, session: TrainSession, run_uri: str | None = None) -> dict[str, Any]:
    """Run (or resume) training to `cfg.training.steps`; returns the last metrics reported."""
    torch.manual_seed(derive_seed(cfg.seed, session.rank, 99))
    method = get_method(cfg.method)
    components = build_diffusion(cfg.model.base, cfg.model.revision).freeze()
    trainable = method.trainable_parameters(components, cfg)
    components.to(session.device)
    unet = session.prepare_model(components.unet) if trainable else components.unet
    evaluator = (
        build_evaluator_for(cfg, session.device, method.reward_with_mllm) if method.uses_reward else None
    )
    ctx = TrainContext(cfg, session, components, unet, trainable, evaluator=evaluator)
    method.setup(ctx)
    frozen_at_start = frozen_checksum(components.unet)

    t = cfg.training
    optimizer = (
        torch.optim.AdamW(trainable, lr=t.learning_rate, weight_decay=t.weight_decay) if trainable else None
    )
    lr_scheduler = (
        get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=t.warmup_steps)
        if optimizer
        else None
    )
    start, counters = 0, {"skipped_steps": 0.0}
    with session.checkpoint_to_resume() as directory:
        if directory is not None:
            start, counters = restore_checkpoint(directory, method.adapter, unet, optimizer, lr_scheduler)
    resumed_from = start

    pending: list[dict[str, Any]] = []  # per-step records since the last report

    def report(metrics: dict[str, Any], step: int, with_checkpoint: bool) -> None:
        """Send the latest metrics with every step's record since the last report (`history`)."""
        bundle = {**metrics, HISTORY_KEY: [*pending, metrics]}
        pending.clear()
        if not with_checkpoint:
            session.report(bundle, None, None)
            return
        if session.rank == 0 and abs(frozen_checksum(components.unet) - frozen_at_start) > 1e-6 * max(
            1.0, frozen_at_start
        ):
            raise TrainingError(f"step {step}: frozen base weights changed; refusing to checkpoint")
        with scratch_dir() as tmp:
            if session.rank == 0:
                write_checkpoint(tmp, cfg, method.adapter, unet, optimizer, lr_scheduler, step, counters)
            session.report(bundle, tmp if session.rank == 0 else None, f"checkpoint_{step:06d}")

    base_metrics = {"resumed_from": float(resumed_from), "world_size": float(session.world_size)}
    if not trainable or start >= t.steps:
        final = {"step": float(start), **counters, **base_metrics, "checkpoint": 1.0}
        report(final, start, with_checkpoint=directory is None)  # nothing new to train: keep the latest
        return final

    consecutive_bad = 0
    last_error: str | None = None
    metrics: dict[str, Any] = {}
    n_updates = method.updates_per_step(cfg)

    def nan_backward() -> None:
        # A NaN gradient on every trainable parameter: this rank still joins the others' gradient
        # all-reduce, and the all-reduced NaN makes every rank skip the update.
        optimizer.zero_grad(set_to_none=True)
        (sum(p.sum() for p in trainable) * float("nan")).backward()

    for step in range(start, t.steps):
        completed = step + 1
        _inject_failure(cfg, session, completed, run_uri)
        started = time.perf_counter()
        try:
            plan = method.plan(ctx, step)
            if len(plan.updates) != n_updates:
                raise TrainingError(
                    f"{method.name} planned {len(plan.updates)} updates, expected {n_updates}"
                )
        except CraftError as exc:
            plan, last_error = None, f"step {completed}: {exc}"
            print(f"[rank {session.rank}] skipping {last_error}", file=sys.stderr, flush=True)
        sums: dict[str, float] = defaultdict(float, plan.metrics if plan else {})
        losses, grad_norms, micro_index = [], [], 0
        for update in plan.updates if plan else [[]] * n_updates:
            finite, loss_sum, n_micro = True, 0.0, max(1, len(update))
            try:
                if not update:
                    raise TrainingError("no micro-batches planned")
                for position, micro in enumerate(update):
                    sync = position == n_micro - 1 or not hasattr(unet, "no_sync")
                    with contextlib.nullcontext() if sync else unet.no_sync(), ctx.autocast():
                        loss, micro_metrics = method.loss(ctx, micro, step, micro_index)
                        if completed in cfg.debug.nonfinite_steps and session.rank == 0:
                            loss = loss * float("nan")
                    micro_index += 1
                    finite = finite and bool(torch.isfinite(loss.detach()))
                    (loss / n_micro).backward()
                    loss_sum += float(loss.detach())
                    for key, value in micro_metrics.items():
                        sums[key] += value / (n_micro * n_updates)
            except CraftError as exc:  # e.g. the reward met NaN pixels
                if plan is not None:
                    last_error = f"step {completed}: {exc}"
                    print(f"[rank {session.rank}] skipping {last_error}", file=sys.stderr, flush=True)
                finite = False
                nan_backward()
            grads_finite = all(torch.isfinite(p.grad).all() for p in trainable if p.grad is not None)
            bad = torch.tensor([0.0 if finite and grads_finite else 1.0], device=session.device)
            if float(session.all_reduce(bad, "max")) > 0:  # every rank takes the same decision
                optimizer.zero_grad(set_to_none=True)
                counters["skipped_steps"] += 1
                consecutive_bad += 1
                grad_norms.append(float("nan"))
            else:
                grad_norms.append(float(torch.nn.utils.clip_grad_norm_(trainable, t.max_grad_norm)))
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                consecutive_bad = 0
            losses.append(loss_sum / n_micro if finite else float("nan"))
        local = {"loss": sum(losses) / len(losses), **sums}
        metrics = _mean_across_ranks(session, local, session.device) if session.world_size > 1 else local
        metrics.update(base_metrics)
        metrics.update(
            step=float(completed),
            grad_norm=sum(grad_norms) / len(grad_norms),
            lr=float(lr_scheduler.get_last_lr()[0]),
            step_time_s=time.perf_counter() - started,
            timestamp=time.time(),
            **counters,
        )
        if consecutive_bad > t.max_nonfinite_steps:
            fatal = (
                f"step {completed}: {consecutive_bad} non-finite updates in a row (limit training.max_nonfinite_steps="
                f"{t.max_nonfinite_steps}); the last finite checkpoint is kept. Lower the learning rate or check the reward."
                + (f" Last error: {last_error}" if last_error else "")
            )
            metrics[FATAL_KEY] = fatal
            report(metrics, completed, with_checkpoint=False)
            return metrics
        with_checkpoint = completed % t.checkpoint_every == 0 or completed == t.steps
        metrics["checkpoint"] = float(with_checkpoint)
        if with_checkpoint or completed % t.report_every == 0:
            report(metrics, completed, with_checkpoint)
        else:
            pending.append(metrics)
    return metrics


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point (runs on every worker)."""
    from craft_ray.config import validate_config
    from craft_ray.train.session import RaySession

    cfg = validate_config(config["experiment"], source="train_loop_config")
    train_loop(cfg, RaySession(config["run_uri"]), config["run_uri"])
