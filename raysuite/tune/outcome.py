"""How a trial ended, read from its last result: the driver reports ``COMPLETE`` after its
last stage and ``DIVERGED`` when a stage's loss went non-finite (then it stops, unretried).
A trial that ends without either, and without an error, was stopped by the scheduler."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

COMPLETE = "raysuite/complete"
DIVERGED = "raysuite/diverged"
CHECKPOINTED = "raysuite/checkpointed"  # 1.0 on a Train report that carries a checkpoint

Outcome = Literal["complete", "pruned", "diverged", "failed"]


def classify(result: Mapping[str, Any] | None, error: bool = False) -> Outcome:
    if error:
        return "failed"
    result = result or {}
    if result.get(DIVERGED):
        return "diverged"
    return "complete" if result.get(COMPLETE) else "pruned"
