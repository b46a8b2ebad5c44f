"""``cluster.yaml`` checks with Ray's own autoscaler schema validation."""

from __future__ import annotations

from pathlib import Path

import yaml


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
