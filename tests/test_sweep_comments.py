"""Every ``raysuite validate|sweep|train ...`` command a comment in sweeps/*.yaml shows
(on one line), and every ``--set KEY=VALUE`` a comment mentions outside one (for its own
file), parses as the CLI's and validates: the same spec with the same ``--set`` items."""

import glob
import re
import shlex

import pytest

from raysuite.cli import main, parser

COMMAND = re.compile(r"raysuite\s+(?:validate|sweep|train)\s[^`]*")
SET = re.compile(r"--set[\s=](\S+)")


def _comment(line: str) -> str:
    """The comment part of a YAML line (the shipped specs hold no '#' in a value)."""
    found = re.search(r"(?:^|\s)#(.*)$", line)
    return found.group(1) if found else ""


def shown_commands() -> list[tuple[str, list[str]]]:
    """(file, argv after ``raysuite``) of each command the sweeps' comments show; a
    ``--set`` mentioned outside a command becomes ``validate FILE --set ITEM``."""
    found = []
    for path in sorted(glob.glob("sweeps/*.yaml")):
        with open(path) as f:
            for comment in map(_comment, f):
                commands = COMMAND.findall(comment)
                found += [(path, shlex.split(c.strip().rstrip(".,;)"))[1:]) for c in commands]
                if not commands:
                    found += [(path, ["validate", path, "--set", item.rstrip(".,;)")]) for item in SET.findall(comment)]
    return found


def test_the_sweeps_show_commands():
    assert any(argv[0] != "validate" for _, argv in shown_commands())


@pytest.mark.parametrize(("path", "argv"), shown_commands(), ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_a_command_shown_in_a_comment_validates(path, argv, capsys):
    args = parser().parse_args(argv)  # exits (fails the test) on options the CLI lacks
    if argv[0] != "validate":
        argv = ["validate", args.spec, *(f"--set={item}" for item in args.set)]
    assert main(argv) == 0, capsys.readouterr().err
