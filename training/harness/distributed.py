"""One process or many (torchrun): rank, device and the few collectives the trainers need.

``torchrun --standalone --nproc_per_node N -m training.X ...`` sets RANK/WORLD_SIZE/LOCAL_RANK; without
them the run is a single process and every collective is a no-op. gloo on CPU, nccl on CUDA.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn


@dataclass(frozen=True)
class Distributed:
    rank: int  # global rank, 0 writes the run folder
    world_size: int  # number of processes
    local_rank: int  # rank on this node (picks the GPU)
    device: torch.device  # where this rank's models live

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (returns a new tensor; single process: a copy)."""
        out = values.detach().clone().to(self.device)
        if self.enabled:
            tdist.all_reduce(out, op=tdist.ReduceOp.SUM)
        return out

    def all_reduce_mean(self, values: torch.Tensor) -> torch.Tensor:
        return self.all_reduce_sum(values) / self.world_size

    def any(self, flag: bool) -> bool:
        """True on every rank when it is true on one (e.g. a Ctrl-C seen by one process)."""
        if not self.enabled:
            return flag
        return bool(self.all_reduce_sum(torch.tensor([float(flag)])).item() > 0)

    def gather_objects(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (JSON-like), in rank order, on every rank."""
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        tdist.all_gather_object(out, obj)
        return out

    def wrap(self, module: nn.Module, **ddp_kwargs: Any) -> nn.Module:
        """DistributedDataParallel around ``module`` when distributed, else ``module`` itself.

        Buffers (e.g. spectral norm's power-iteration vectors) are broadcast from rank 0 at every
        forward, so they cannot drift apart between ranks (``forward_sync_buffers``, formerly
        ``broadcast_buffers``, on torch versions that have it).
        """
        if not self.enabled:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
        sync = {"forward_sync_buffers": True} if "forward_sync_buffers" in params else {"broadcast_buffers": True}
        return nn.parallel.DistributedDataParallel(module, device_ids=ids, **sync, **ddp_kwargs)


def unwrap(module: nn.Module) -> nn.Module:
    """The model inside a DDP (or torch.compile) wrapper."""
    while True:
        inner = getattr(module, "module", None) or getattr(module, "_orig_mod", None)
        if inner is None:
            return module
        module = inner


def set_threads(threads: int) -> None:
    """Set torch's CPU threads (0 keeps the default). On an oversubscribed machine several threads
    spin-wait on each other: one thread per process can be several times faster."""
    if threads < 0:
        raise ValueError(f"threads must be ≥ 0, got {threads}")
    if threads:
        torch.set_num_threads(threads)


def init_distributed(*, device: str = "auto") -> Distributed:
    """Join the torchrun process group if there is one; pick this rank's device.

    device: ``auto`` (CUDA when available), ``cpu``, or ``cuda``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA device is available")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not tdist.is_initialized():
        tdist.init_process_group(backend="nccl" if use_cuda else "gloo", init_method="env://")
    return Distributed(rank=rank, world_size=world, local_rank=local, device=dev)


def shutdown(dist: Distributed) -> None:
    if dist.enabled and tdist.is_initialized():
        tdist.destroy_process_group()


def weights_checksum(module: nn.Module) -> str:
    """SHA-256 of a module's state dict (names and bytes): equal on every rank when DDP keeps them in sync."""
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def write_checksums(folder: Path, *, rank: int, step: int, modules: dict[str, nn.Module], **extra: float) -> Path:
    """``folder/checksums/rank<r>.json``: each module's weight hash (the DDP tests compare ranks)."""
    out = folder / "checksums" / f"rank{rank}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"step": step, "rank": rank, **{k: weights_checksum(m) for k, m in modules.items()},
                               **extra}))
    return out
