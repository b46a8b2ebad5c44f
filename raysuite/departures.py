"""A sweep's departures from its seed: the method's ledger (``Method.departures``) and,
per configuration, every value that differs from the seed's design (``Method.seed_design``).
``raysuite plan``, the parent run's ``departures.md`` and the report read this."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from raysuite.methods import METHODS
from raysuite.methods.ledger import Departure, Paper, departures_markdown, design_flags
from raysuite.plan import all_points
from raysuite.spec import Spec, config_label, resolve_stage_configs


def seed_number(method: str) -> str:
    """``003`` of seed file ``003_ed4647cf93637bc5.txt``."""
    return METHODS[method].seed.split("_", 1)[0]


@dataclass
class SweepDepartures:
    method: str
    seed: str
    paper: Paper | None
    ledger: tuple[Departure, ...]
    flags: dict[str, list[str]] = field(default_factory=dict)  # configuration label -> flags

    def markdown(self) -> str:
        return departures_markdown(self.method, self.seed, self.paper, self.ledger, self.flags)

    def as_json(self) -> list[dict[str, Any]]:
        """The ledger's entries (``kind: ledger``), then each flagged value (``kind: value``)."""
        rows = [{"kind": "ledger", **asdict(d)} for d in self.ledger]
        rows += [
            {"kind": "value", "config": label, "flag": flag}
            for label, flags in self.flags.items()
            for flag in flags
        ]
        return rows


def departures_of(spec: Spec) -> SweepDepartures:
    """The ledger of ``spec``'s method and the flags of every configuration (arms x grid)."""
    method = METHODS[spec.method]
    seed = seed_number(spec.method)
    flags = {}
    for point in all_points(spec):
        configs = resolve_stage_configs(spec, point, where="search")
        flags[config_label(point)] = design_flags(seed, method.seed_design(configs), configs)
    return SweepDepartures(spec.method, seed, method.paper, method.departures, flags)
