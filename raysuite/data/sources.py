"""A spec's multi-source data section, ``data.sources`` (name -> a single-dataset section
with its own ``format`` and ``root``), as seed 002's pool and transfer tasks read it."""

from __future__ import annotations

from typing import Any

from raysuite.data.datasets import prepare


def source_data(data: dict[str, Any], name: str) -> dict[str, Any]:
    """Source ``name`` of ``data.sources`` as a single-dataset data section."""
    return {**data["sources"][name], "cache_dir": data.get("cache_dir")}


def prepare_data(data: dict[str, Any]) -> None:
    """Synthesise missing sources (when allowed) and ingest each once."""
    for name in data["sources"]:
        prepare(source_data(data, name), lambda root: any(root.iterdir()), default_cases=12)


def task_source(data: dict[str, Any], task: str) -> str:
    """The one source of format ``task``."""
    names = [n for n, s in data["sources"].items() if s["format"] == task]
    if len(names) != 1:
        raise ValueError(
            f"finetune.task {task!r} needs exactly one data source of format {task!r}, found {names}"
        )
    return names[0]
