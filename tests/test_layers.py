"""The house's floors: a module imports only modules of its own floor or below, and every
module imports on its own (no cycle that only works in one import order).

Floors, lowest first:

0. foundations: ``storage``, ``pydantic_types``, ``code_fingerprint``, ``data``, ``train``,
   ``track`` and the report's building blocks (statistics, tables, plots, HTML, dashboard
   checks: plain pandas / matplotlib that a method's ``report`` hook may call).
1. ``methods``: the five seeds' methods, their ``nn`` blocks, the contract, the ledger.
2. what a spec makes of methods: ``spec*``, ``plan``, ``departures``, ``weight_resolution``,
   the sweep's report (``report.sweep_report``), the method card and the scaffold.
3. ``tune``: Ray Tune, Ray Train and Optuna.
4. ``cli``.

The report is split across floors 0 and 2 because its statistics and figures are leaves a
method's hook uses, while ``sweep_report`` reads a spec (which needs the methods).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "raysuite"

FLOORS: tuple[tuple[str, ...], ...] = (
    (
        "raysuite.storage", "raysuite.pydantic_types", "raysuite.code_fingerprint",
        "raysuite.data", "raysuite.train", "raysuite.track",
        "raysuite.report.stats", "raysuite.report.summary", "raysuite.report.tables",
        "raysuite.report.curves", "raysuite.report.plots", "raysuite.report.html",
        "raysuite.report.dashboards",
    ),
    ("raysuite.methods",),
    (
        "raysuite.spec", "raysuite.spec_errors", "raysuite.spec_numbers", "raysuite.spec_yaml",
        "raysuite.spec_checks", "raysuite.spec_stage_checks", "raysuite.plan", "raysuite.departures",
        "raysuite.weight_resolution", "raysuite.report.sweep_report", "raysuite.method_card",
        "raysuite.scaffold",
    ),
    ("raysuite.tune",),
    ("raysuite.cli", "raysuite.__main__"),
)  # fmt: skip
PACKAGES = ("raysuite", "raysuite.report")  # their __init__ modules import nothing of raysuite


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def floor_of(module: str) -> int | None:
    """The floor of ``module`` (the longest matching prefix), None for a bare package."""
    best: tuple[int, int] | None = None
    for floor, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (floor, len(prefix))
    return None if best is None else best[0]


def imported(source: str, module: str, is_package: bool = False) -> list[tuple[str, int]]:
    """Every raysuite module ``source`` (the text of ``module``) imports, at module level or
    inside functions, ``TYPE_CHECKING`` blocks included: (module, line)."""
    package = module if is_package else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.append((target, node.lineno))
            # ``from raysuite.methods import nn``: an imported name may be a module
            out += [(f"{target}.{a.name}", node.lineno) for a in node.names if _is_module(f"{target}.{a.name}")]
    return [(name, line) for name, line in out if name == "raysuite" or name.startswith("raysuite.")]


def _is_module(name: str) -> bool:
    path = ROOT.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


MODULES = sorted(module_name(p) for p in ROOT.rglob("*.py"))


def test_every_module_has_a_floor():
    homeless = [m for m in MODULES if floor_of(m) is None and m not in PACKAGES]
    assert not homeless, f"modules on no floor (add them to FLOORS): {homeless}"


def test_floor_of_reads_the_longest_prefix():
    assert floor_of("raysuite.report.sweep_report") == 2
    assert floor_of("raysuite.report.summary") == 0
    assert floor_of("raysuite.methods.nn.unet") == 1
    assert floor_of("raysuite.specimen") is None  # a prefix is a whole dotted part


def test_no_import_runs_up_a_floor():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        module = module_name(path)
        own = floor_of(module)
        for target, line in imported(path.read_text(), module, path.name == "__init__.py"):
            theirs = floor_of(target)
            if own is None and target not in PACKAGES:
                upward.append(f"{module} (a bare package) imports {target} (line {line})")
            elif theirs is not None and own is not None and theirs > own:
                upward.append(f"{module} (floor {own}) imports {target} (floor {theirs}, line {line})")
    assert not upward, "imports running up a floor:\n" + "\n".join(upward)


def test_the_rule_catches_an_upward_import():
    """The checker itself: a methods module importing tune, directly, relatively or inside a
    function, is read as importing it."""
    source = (
        "from raysuite.tune.sweep import run_sweep\n"
        "def f():\n    from ...tune import trial\n"
        "from ...tune import worker\n"
    )
    found = imported(source, "raysuite.methods.nn.probe")
    assert ("raysuite.tune.sweep", 1) in found
    assert ("raysuite.tune.trial", 3) in found and ("raysuite.tune.worker", 4) in found
    assert all(floor_of(name) == 3 for name, _ in found)
    assert floor_of("raysuite.methods.nn.probe") == 1


IMPORT_EACH = """
import importlib, sys, traceback
failed = []
for name in sys.argv[1:]:
    for loaded in [m for m in sys.modules if m == "raysuite" or m.startswith("raysuite.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed.append(name + ":\\n" + traceback.format_exc(limit=3))
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""


@pytest.mark.timeout(900)
def test_each_module_imports_first():
    """Every module imported first, with no raysuite module loaded before it (third-party
    libraries stay loaded: importing torch once keeps this to one process), so a cycle that
    works only in one import order fails here."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EACH, *MODULES], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


def test_formats_never_import_their_synthetic_writers():
    """``data/synth`` writes each format's files from its layout (it may import
    ``data/formats``); an ingest never needs a writer, so the reverse is refused."""
    found = [
        f"{module_name(path)} imports {target} (line {line})"
        for path in sorted((ROOT / "data" / "formats").rglob("*.py"))
        for target, line in imported(path.read_text(), module_name(path), path.name == "__init__.py")
        if target.startswith("raysuite.data.synth")
    ]
    assert not found, "\n".join(found)
