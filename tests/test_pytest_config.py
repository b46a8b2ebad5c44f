"""pytest runs with ``--strict-markers``: a misspelt marker (``e2 e`` for ``e2e``) is an
error at collection, not a test silently left out of ``-m e2e`` or in when it should not be.
Every marker the tests use is registered (or is one of pytest's or a plugin's own)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILTIN = {"parametrize", "skipif", "skip", "xfail", "usefixtures", "filterwarnings", "timeout"}


def test_strict_markers_is_on(pytestconfig):
    assert pytestconfig.inipath == ROOT / "pyproject.toml"
    assert "--strict-markers" in pytestconfig.getini("addopts")
    assert pytestconfig.option.strict_markers  # this very run has it


def test_every_marker_used_is_registered(pytestconfig):
    registered = {line.split(":")[0].strip() for line in pytestconfig.getini("markers")}
    used = {
        name
        for path in (ROOT / "tests").glob("*.py")
        for name in re.findall(r"pytest\.mark\.([A-Za-z_]\w*)", path.read_text())
    }
    assert used - BUILTIN <= registered, used - BUILTIN - registered
    assert {"e2e", "slow"} <= registered
