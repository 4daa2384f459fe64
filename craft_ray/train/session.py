"""Where a training loop runs: a Ray Train worker, or a plain process (benchmarks, debugging).

The loop talks to a session for its rank, device, model placement, collectives (reductions,
gradient averaging), the checkpoint to resume from and the reporting of metrics and checkpoints;
nothing else in the loop knows about Ray.

Gradients are averaged explicitly (`average_gradients`) rather than by DDP's hooks inside
`backward()`: a rank whose step failed (an endpoint error, a NaN) must be able to skip its backward
without leaving the other ranks waiting in an all-reduce, and the loop calls every collective on
every rank in the same order whatever happened.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import torch


class TrainSession(Protocol):
    rank: int
    world_size: int
    device: torch.device

    def prepare_model(self, module: torch.nn.Module) -> torch.nn.Module: ...

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor: ...

    def all_gather_object(self, obj: Any) -> list[Any]: ...

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None: ...

    def checkpoint_to_resume(self) -> contextlib.AbstractContextManager[Path | None]: ...

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None, name: str | None) -> None: ...


def latest_complete_checkpoint(run_uri: str, into: Path) -> Path | None:
    """The newest `checkpoint_NNNNNN` under the run directory whose writing finished, copied to `into`.

    Ray Train registers a checkpoint when its controller processes the report; a worker failure
    can overtake that, and Ray would then restart from an older checkpoint (or from scratch).
    Every checkpoint is fully uploaded before `ray.train.report` returns on rank 0, so the run
    directory itself is the authority: take its newest complete checkpoint.
    """
    import pyarrow.fs as pafs

    from craft_ray.train.checkpoint import is_complete

    fs, root = pafs.FileSystem.from_uri(run_uri)
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        return None
    names = sorted(
        (
            info.base_name
            for info in fs.get_file_info(pafs.FileSelector(root))
            if info.type == pafs.FileType.Directory
            and info.base_name.startswith("checkpoint_")
            and info.base_name.removeprefix("checkpoint_").isdigit()
        ),
        reverse=True,
    )
    for name in names:
        local = into / name
        if isinstance(fs, pafs.LocalFileSystem):
            candidate = Path(root) / name
        else:
            pafs.copy_files(f"{root}/{name}", str(local), source_filesystem=fs)
            candidate = local
        if is_complete(candidate):
            return candidate
    return None


class LocalSession:
    """One process, no Ray: checkpoints are copied under `out_dir`, metrics kept in a list."""

    rank = 0
    world_size = 1

    def __init__(self, out_dir: str | Path, device: str | torch.device = "cpu"):
        self.out_dir = Path(out_dir)
        self.device = torch.device(device)
        self.metrics: list[dict[str, Any]] = []

    def prepare_model(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.to(self.device)

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        pass

    @contextlib.contextmanager
    def checkpoint_to_resume(self) -> Iterator[Path | None]:
        with scratch_dir() as tmp:
            yield latest_complete_checkpoint(str(self.out_dir.resolve()), tmp)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None, name: str | None) -> None:
        self.metrics.extend(dict(m) for m in metrics.get("history") or [metrics])
        if checkpoint_dir is not None:
            shutil.copytree(
                checkpoint_dir,
                self.out_dir / (name or f"checkpoint_{len(self.metrics):06d}"),
                dirs_exist_ok=True,
            )


class RaySession:
    """Inside a Ray Train worker (Train v2): the process group Ray Train set up (gloo on CPU, nccl
    on GPU) averages gradients; rank 0 writes checkpoints."""

    def __init__(self, run_uri: str) -> None:
        import ray.train
        import ray.train.torch

        self.run_uri = run_uri
        ctx = ray.train.get_context()
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = ray.train.torch.get_device()

    def prepare_model(self, module: torch.nn.Module) -> torch.nn.Module:
        """On this worker's device, with rank 0's trainable weights (ranks may initialise LoRA
        differently); not wrapped in DDP: see the module docstring."""
        import ray.train.torch

        module = ray.train.torch.prepare_model(module, parallel_strategy=None)
        if self.world_size > 1:
            import torch.distributed as dist

            with torch.no_grad():
                for param in module.parameters():
                    if param.requires_grad:
                        dist.broadcast(param.data, src=0)
        return module

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, obj)
        return gathered

    def average_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Mean of every parameter's gradient over the ranks, in flat buckets (few collectives)."""
        if self.world_size == 1:
            return
        import torch.distributed as dist

        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        for bucket in _buckets(grads, GRADIENT_BUCKET_ELEMENTS):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            flat /= self.world_size
            for grad, chunk in zip(bucket, flat.split([g.numel() for g in bucket]), strict=True):
                grad.copy_(chunk.view_as(grad))
        for param, grad in zip(params, grads, strict=True):
            param.grad = grad

    @contextlib.contextmanager
    def checkpoint_to_resume(self) -> Iterator[Path | None]:
        with scratch_dir() as tmp:
            yield latest_complete_checkpoint(self.run_uri, tmp)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None, name: str | None) -> None:
        import ray.train

        checkpoint = (
            ray.train.Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir is not None else None
        )
        ray.train.report(
            metrics, checkpoint=checkpoint, checkpoint_dir_name=name if checkpoint is not None else None
        )


GRADIENT_BUCKET_ELEMENTS = 1 << 24  # 64 MiB of float32 per all-reduce


def _buckets(tensors: list[torch.Tensor], limit: int) -> Iterator[list[torch.Tensor]]:
    bucket: list[torch.Tensor] = []
    size = 0
    for tensor in tensors:
        if bucket and (size + tensor.numel() > limit or tensor.dtype != bucket[0].dtype):
            yield bucket
            bucket, size = [], 0
        bucket.append(tensor)
        size += tensor.numel()
    if bucket:
        yield bucket


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="craft-ckpt-") as tmp:
        yield Path(tmp)
