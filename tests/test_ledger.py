"""The departures ledger: every method names its paper and declares each departure in
full, every value of a shipped sweep that differs from the seed's design is a declared
departure, and the flags and departures.md read as the report shows them."""

from __future__ import annotations

import glob
import re

import pytest

from raysuite.departures import departures_of
from raysuite.methods import METHODS
from raysuite.methods.ledger import Departure, Paper, departures_markdown, design_flags
from raysuite.spec import load_spec


@pytest.mark.parametrize("name", list(METHODS))
def test_each_method_names_its_paper_and_declares_each_departure_in_full(name):
    method = METHODS[name]
    assert (
        method.paper is not None
        and method.paper.title
        and method.paper.authors
        and method.paper.venue
    )
    items = [d.item for d in method.departures]
    assert method.departures and len(items) == len(set(items))
    fields = {stage: set(d.config.model_fields) for stage, d in method.stages.items()}
    for d in method.departures:
        assert d.seed and d.ours and d.why, d.item
        for stage, field in re.findall(rf"\b({'|'.join(method.stages)})\.(\w+)", d.item):
            assert field in fields[stage], f"{d.item}: {stage} has no field {field}"


@pytest.mark.parametrize("path", sorted(glob.glob("sweeps/*.yaml")), ids=lambda p: p.split("/")[-1])
def test_every_value_a_shipped_sweep_takes_off_the_seeds_design_is_a_declared_departure(path):
    spec = load_spec(path)
    items = {d.item for d in METHODS[spec.method].departures}
    sweep = departures_of(spec)
    assert sweep.ledger == METHODS[spec.method].departures
    if spec.tiny:  # the demo: CPU-sized, and flagged as not the seed's design
        assert all(flags for flags in sweep.flags.values())
        return
    for label, flags in sweep.flags.items():
        for flag in flags:
            key = re.search(r"`([^`]+)`", flag).group(1)
            assert key in items, f"{path}: {label}: {flag}"


def test_flags_by_hand():
    configs = {
        "train": {"batch_size": 96, "lr": 0.001, "tau": [0.5, 0.2]},
        "crf": {"enabled": True},
    }
    design = {"train.batch_size": 48, "train.lr": 0.001 * (1 + 1e-15), "train.tau": [0.5, 0.2],
              "crf.enabled": True, "crf.size": 19}  # fmt: skip
    assert design_flags("003", design, configs) == [
        "not seed 003's design: `train.batch_size` 96 ≠ 48"
    ]
    assert design_flags("003", {"crf.enabled": False}, configs) == [
        "not seed 003's design: `crf.enabled` True ≠ False"
    ]


def test_departures_markdown_is_a_table_then_the_flags():
    text = departures_markdown(
        "m", "007", Paper("A title", "A. Author", "Venue 2020"),
        [Departure("train.lr", "§4: 0.1 | 0.2", "0.05", "stability")], {"arm a": ["flag one"], "arm b": []},
    )  # fmt: skip
    lines = text.splitlines()
    assert (
        lines[0] == "# Departures from the seed: m (seed 007)"
        and lines[2] == "A. Author. A title. Venue 2020."
    )
    assert "| train.lr | §4: 0.1 \\| 0.2 | 0.05 | stability |" in lines
    assert lines[-1] == "- arm a: flag one" and "arm b" not in text
