"""The loop's collectives over plain ``torch.distributed`` (no Ray): what a
:class:`~raysuite.train.loop.Runtime` over an initialised process group delegates to
(``raysuite.tune.worker.RayRuntime``, a test's gloo processes).

Every function is the identity (or ``[value]``) when no process group is initialised or it
has one process. Tensors travel on ``device`` under NCCL (which cannot move CPU tensors),
on the CPU otherwise; object collectives pickle their values.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


def world() -> int:
    """Processes in the default group (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _place(t: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    return t.to(device) if device is not None and dist.get_backend() == "nccl" else t


def broadcast(value: Any) -> Any:
    """Rank 0's ``value`` (any picklable object) on every rank."""
    if world() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order, on every rank: ``[v_0, ..., v_{W-1}]``."""
    if world() == 1:
        return [value]
    out: list[Any] = [None] * world()
    dist.all_gather_object(out, value)
    return out


def all_mean(values: dict[str, float], device: torch.device | None = None) -> dict[str, float]:
    """The mean over ranks of each value; every rank must pass the same keys."""
    if world() == 1:
        return dict(values)
    keys = sorted(values)
    t = _place(torch.tensor([float(values[k]) for k in keys], dtype=torch.float64), device)
    dist.all_reduce(t)
    return {k: float(v) / world() for k, v in zip(keys, t.tolist(), strict=True)}


def all_true(flag: bool, device: torch.device | None = None) -> bool:
    """Whether ``flag`` holds on every rank (a 1-element MIN all-reduce)."""
    if world() == 1:
        return bool(flag)
    t = _place(torch.tensor([1 if flag else 0], dtype=torch.int32), device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item())
