"""``cluster.yaml`` checks: Ray's own autoscaler schema validation, then raysuite's
safety rules. No service may listen on every interface (``0.0.0.0``: the MLflow server and
the dashboard have no authentication, so they stay on 127.0.0.1 behind an SSH tunnel), and
no credential may be written into the file (it is synced to every node and often
committed): credentials come from the environment or the cloud's instance profile."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

_ALL_INTERFACES = re.compile(r"(?<![\d.])0\.0\.0\.0(?![\d.])|\[::\]")
_AWS_KEY_ID = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")
_SECRET_NAME = r"[A-Za-z0-9_]*(?:SECRET|PASSWORD|PASSWD|TOKEN|ACCESS_KEY)[A-Za-z0-9_]*"
# NAME=value or NAME: value in a command, where value is not a $VARIABLE or a placeholder
_SECRET_ASSIGNED = re.compile(rf"(?i)\b{_SECRET_NAME}\s*[=:]\s*['\"]?(?![\s$'\"<{{]|$)\S")
_SECRET_KEY = re.compile(rf"(?i)^{_SECRET_NAME}$")


def _strings(node: Any, where: str = "", key: str | None = None) -> Iterator[tuple[str, str | None, str]]:
    """``(key path, mapping key or None, string)`` of every string in the config."""
    if isinstance(node, str):
        yield where, key, node
    elif isinstance(node, dict):
        for k, value in node.items():
            yield from _strings(value, f"{where}.{k}" if where else str(k), str(k))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _strings(value, f"{where}[{i}]")


def safety_problems(config: dict[str, Any]) -> list[str]:
    """``key: problem`` for each service bound to every interface and each literal
    credential. The credential itself is never quoted."""
    problems = []
    for path, key, text in _strings(config):
        if _ALL_INTERFACES.search(text):
            problems.append(f"{path}: binds a service to every interface (0.0.0.0); bind 127.0.0.1 and use an SSH tunnel")
        if _AWS_KEY_ID.search(text) or _SECRET_ASSIGNED.search(text) or (
            key is not None and _SECRET_KEY.match(key) and text.strip() and not text.strip().startswith("$")
        ):
            problems.append(f"{path}: holds a literal credential; take it from the environment or an instance profile")
    return problems


def validate_cluster(path: str | Path) -> None:
    """Raise ``ValueError`` naming the file when Ray's autoscaler refuses the config."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: {err}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a cluster config must be a YAML mapping")
    try:
        # as `ray up` does: merge Ray's defaults, then validate the schema and node types
        prepared = prepare_config(config)
        prepared.setdefault("cluster_synced_files", [])
        validate_config(prepared)
    except Exception as err:  # jsonschema.ValidationError, ValueError from Ray
        message = getattr(err, "message", None) or str(err).splitlines()[0]
        where = ".".join(str(p) for p in getattr(err, "absolute_path", []) or [])
        raise ValueError(f"{path}: {where + ': ' if where else ''}{message}") from None
    problems = safety_problems(config)
    if problems:
        raise ValueError(f"{path}: " + "\n  ".join(problems))
