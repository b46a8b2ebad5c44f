"""Can the cluster ever hold one trial? Checked before any trial, so a spec asking for
2 workers x 1 GPU on a one-GPU machine exits 2 naming the shortfall instead of waiting
(Train waits for its workers up to ``RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S``, 30 min).

A trial reserves, for its widest stage, ``workers`` bundles of ``{CPU, GPU}`` (one Train
worker each; each bundle must fit on one node). The cluster offers its live nodes' total
resources and, on an autoscaling cluster, up to ``max_workers`` more nodes of each node
type whose resources the autoscaler config declares (``ray up``'s
``~/ray_bootstrap_config.yaml`` on the head). A node type that declares no resources
(Ray fills them in from the instance type at launch) is not counted: the check then
says so rather than refusing on a guess.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from raysuite.plan import stage_world_size
from raysuite.spec import Spec

BOOTSTRAP_CONFIG = Path.home() / "ray_bootstrap_config.yaml"
KINDS = ("CPU", "GPU")


@dataclass(frozen=True)
class Offer:
    """What the cluster can offer: its live nodes, and node types it may start."""

    nodes: list[dict[str, float]]
    node_types: dict[str, tuple[dict[str, float], int]]  # name -> (resources, max_workers)
    undeclared: tuple[str, ...] = ()  # node types whose resources are unknown before launch


def trial_bundles(spec: Spec) -> list[dict[str, float]]:
    """One ``{CPU, GPU}`` bundle per Train worker of the trial's widest stage."""
    from raysuite.methods import METHODS

    res = spec.resources
    bundle = {"CPU": res.cpus_per_worker, "GPU": res.gpus_per_worker}
    workers = max(stage_world_size(spec, stage) for stage in METHODS[spec.method].stages)
    return [dict(bundle) for _ in range(workers)]


def _fits(bundle: Mapping[str, float], free: Mapping[str, float]) -> bool:
    return all(bundle.get(k, 0) <= free.get(k, 0) + 1e-9 for k in KINDS)


def shortfall(bundles: list[dict[str, float]], offer: Offer) -> str | None:
    """``None`` when the bundles can be placed (first fit, largest first, onto the live
    nodes, then onto new nodes of the declared types), else what is missing, in words."""
    free = [dict(n) for n in offer.nodes]
    budget = {name: count for name, (_, count) in offer.node_types.items()}
    for bundle in sorted(bundles, key=lambda b: (b.get("GPU", 0), b.get("CPU", 0)), reverse=True):
        slot = next((f for f in free if _fits(bundle, f)), None)
        if slot is None:
            name = next((n for n, (r, _) in offer.node_types.items() if budget[n] > 0 and _fits(bundle, r)), None)
            if name is not None:
                budget[name] -= 1
                slot = dict(offer.node_types[name][0])
                free.append(slot)
        if slot is None:
            return _describe(bundles, offer)
        for k in KINDS:
            slot[k] = slot.get(k, 0) - bundle.get(k, 0)
    return None


def _describe(bundles: list[dict[str, float]], offer: Offer) -> str:
    one = bundles[0]
    asks = f"{len(bundles)} worker(s) x {{CPU: {one['CPU']:g}, GPU: {one['GPU']:g}}}"
    total = {k: sum(n.get(k, 0) for n in offer.nodes) for k in KINDS}
    biggest = {k: max((n.get(k, 0) for n in offer.nodes), default=0) for k in KINDS}
    text = (
        f"one trial reserves {asks}, but the cluster's {len(offer.nodes)} node(s) hold "
        f"CPU {total['CPU']:g}, GPU {total['GPU']:g} in all (at most CPU {biggest['CPU']:g}, "
        f"GPU {biggest['GPU']:g} on one node)"
    )
    if offer.node_types:
        types = ", ".join(f"{n}: {r} x{c}" for n, (r, c) in sorted(offer.node_types.items()))
        text += f", and its autoscaler may add {types}"
    if offer.undeclared:
        text += f"; node types {list(offer.undeclared)} declare no resources, so they were not counted"
    return text + ": lower resources.workers_per_trial, gpus_per_worker or cpus_per_worker, or add nodes"


def node_types(config: Mapping[str, Any]) -> tuple[dict[str, tuple[dict[str, float], int]], tuple[str, ...]]:
    """The worker node types of an autoscaler config: declared ``{CPU, GPU}`` and
    ``max_workers``; and the names of those that declare no CPU or GPU."""
    declared, undeclared = {}, []
    for name, node in (config.get("available_node_types") or {}).items():
        most = int(node.get("max_workers", config.get("max_workers", 0)))
        if name == config.get("head_node_type") or not most:
            continue
        resources = {k: float(v) for k, v in (node.get("resources") or {}).items() if k in KINDS}
        if resources:
            declared[name] = (resources, most)
        else:
            undeclared.append(name)
    return declared, tuple(undeclared)


def live_offer(nodes: Iterable[Mapping[str, Any]], bootstrap: Path = BOOTSTRAP_CONFIG) -> Offer:
    """The offer of a running cluster: ``ray.nodes()`` and, when this is an autoscaling
    cluster's head, its bootstrap config's node types."""
    live = [{k: float(n["Resources"].get(k, 0)) for k in KINDS} for n in nodes if n.get("Alive")]
    types, undeclared = ({}, ())
    if bootstrap.is_file():
        types, undeclared = node_types(yaml.safe_load(bootstrap.read_text()) or {})
    return Offer(live, types, undeclared)


def check(spec: Spec, offer: Offer) -> str | None:
    """Raise :class:`~raysuite.spec.SpecError` (exit 2) naming ``resources`` when one
    trial can never be placed. When node types of unknown size might hold it, return a
    warning instead: Ray learns their size only when it launches one."""
    from raysuite.spec import SpecError

    problem = shortfall(trial_bundles(spec), offer)
    if problem is None:
        return None
    if offer.undeclared:
        return f"warning: {problem}"
    raise SpecError(f"sweep {spec.name}", "resources", problem)
