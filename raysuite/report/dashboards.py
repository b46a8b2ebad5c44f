"""Checks for the Grafana dashboards in ``dashboards/`` (``raysuite validate``), without Ray.

A dashboard passes when it parses, declares the ``datasource`` templating variable (type
``datasource``, query ``prometheus``) and every panel, target and query variable uses that
variable instead of a fixed datasource, and every metric its PromQL names is one raysuite
exports (:data:`raysuite.train.telemetry.METRICS`, under Ray's Prometheus names) or one
Ray exports itself. Ray's own names are read from the installed Ray package's dashboard
panel definitions (``ray/dashboard/modules/metrics/dashboards/*_panels.py``), parsed with
:mod:`ast`, never imported, so they follow the Ray version in use.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from raysuite.train.telemetry import METRICS, PROMETHEUS_PREFIX

DATASOURCE_VAR = "datasource"
_DATASOURCE_REFS = {"$datasource", "${datasource}"}
OWN_PREFIX = PROMETHEUS_PREFIX + "raysuite_"
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# PromQL words that are never metric names: aggregation operators (``sum by (x) (...)``
# puts no "(" right after ``sum``), binary operators, modifiers and float literals.
_AGGREGATORS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip
_KEYWORDS = _AGGREGATORS | {"and", "or", "unless", "atan2", "bool", "offset", "inf", "nan"}
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_TOKEN = re.compile(
    r"""(?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
      | (?P<var>\$\{[^}]*\}|\$\w+|\[\[\w+(?::\w+)?\]\])
      | (?P<number>(?:0[xX][0-9a-fA-F]+|\d*\.?\d+(?:[eE][+-]?\d+)?)\w*)
      | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
      | (?P<open>[({\[])
      | (?P<close>[)}\]])
      | (?P<other>\S)""",
    re.VERBOSE,
)
_CLOSE = {"(": ")", "{": "}", "[": "]"}


class Problem(NamedTuple):
    """What is wrong, and where: ``key`` is the JSON path (``panels[2].targets[0].expr``)."""

    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.key}: {self.message}" if self.key else self.message


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    A name is an identifier not followed by ``(`` (a function or aggregation), outside
    label matchers ``{...}``, range or subquery brackets ``[...]``, strings and the label
    lists of ``by``/``without``/``on``/``ignoring``/``group_left``/``group_right``, and not
    a PromQL keyword. Grafana variables (``$trial``, ``${trial}``, ``$__rate_interval``,
    ``[[trial]]``) are skipped. Histogram series keep their suffix (``x_bucket``)."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)]
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "open" and text != "(":
            i = _skip_group(tokens, i)
            continue
        if kind == "ident":
            word = text.lower()
            if word in _LABEL_LISTS and nxt == "(":
                i = _skip_group(tokens, i + 1)
                continue
            if nxt != "(" and word not in _KEYWORDS:
                names.add(text)
        i += 1
    return names


def _skip_group(tokens: list[tuple[str | None, str]], start: int) -> int:
    """Index just past the bracket group opening at ``tokens[start]`` (strings inside are
    single tokens, so a quoted bracket never counts)."""
    stack = []
    for i in range(start, len(tokens)):
        kind, text = tokens[i]
        if kind == "open":
            stack.append(_CLOSE[text])
        elif kind == "close" and stack and text == stack[-1]:
            stack.pop()
            if not stack:
                return i + 1
    return len(tokens)


def query_metric_names(query: str) -> set[str]:
    """The metric names of a Grafana Prometheus variable query: ``label_values(metric,
    label)`` and ``query_result(expr)``; ``label_values(label)``, ``label_names()`` and
    ``metrics(regex)`` name none."""
    m = re.fullmatch(r"\s*(\w+)\s*\((.*)\)\s*", query, re.DOTALL)
    if m is None:
        return metric_names(query)
    func, args = m.groups()
    if func == "label_values":
        split = _last_top_level_comma(args)
        return metric_names(args[:split]) if split is not None else set()
    if func == "query_result":
        return metric_names(args)
    if func in ("label_names", "metrics"):
        return set()
    return metric_names(query)


def _last_top_level_comma(text: str) -> int | None:
    depth, last = 0, None
    for m in _TOKEN.finditer(text):
        kind, tok = m.lastgroup, m.group()
        depth += kind == "open"
        depth -= kind == "close"
        if tok == "," and depth == 0:
            last = m.start()
    return last


def own_metric_names() -> frozenset[str]:
    """The Prometheus names of the metrics raysuite exports (``ray_raysuite_...``)."""
    return frozenset(d.prometheus_name for d in METRICS)


@functools.lru_cache(maxsize=1)
def ray_metric_names() -> frozenset[str]:
    """Every ``ray_*`` metric the installed Ray's own Grafana panels query, read from the
    ``expr=`` arguments in ``ray/dashboard/modules/metrics/dashboards/*_panels.py`` (module
    constants they name are followed). Empty when Ray is not installed."""
    spec = importlib.util.find_spec("ray")
    if spec is None or not spec.submodule_search_locations:
        return frozenset()
    names: set[str] = set()
    for root in spec.submodule_search_locations:
        for path in sorted(
            (Path(root) / "dashboard/modules/metrics/dashboards").glob("*_panels.py")
        ):
            for expr in _panel_exprs(ast.parse(path.read_text())):
                names |= {n for n in metric_names(expr) if n.startswith(PROMETHEUS_PREFIX)}
    return frozenset(names)


def _panel_exprs(tree: ast.Module) -> Iterator[str]:
    """The text of every ``expr=`` keyword argument; f-string fields and calls contribute
    their literal parts, a module-level constant its value."""
    constants = {
        target.id: node.value
        for node in tree.body
        if isinstance(node, ast.Assign)
        for target in node.targets
        if isinstance(target, ast.Name)
    }

    def text(node: ast.AST, seen: frozenset[str] = frozenset()) -> str:
        if isinstance(node, ast.Constant):
            return node.value if isinstance(node.value, str) else " "
        if isinstance(node, ast.Name) and node.id in constants and node.id not in seen:
            return text(constants[node.id], seen | {node.id})
        if isinstance(node, ast.JoinedStr | ast.BinOp | ast.Call | ast.FormattedValue):
            return " ".join(text(child, seen) for child in ast.iter_child_nodes(node))
        return " "

    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "expr":
            yield text(node.value)


def _base(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def unknown_metrics(names: set[str]) -> list[str]:
    """``names`` that neither raysuite nor Ray exports, sorted. raysuite's own names must
    match exactly (a counter only exists as ``..._total``); Ray's are compared without a
    histogram suffix (``_bucket``, ``_sum``, ``_count``)."""
    own, ray_bases = own_metric_names(), {_base(n) for n in ray_metric_names()}
    return sorted(
        n for n in names if n not in own and (n.startswith(OWN_PREFIX) or _base(n) not in ray_bases)
    )


def _is_var_ref(datasource: Any) -> bool:
    if isinstance(datasource, dict):
        datasource = datasource.get("uid")
    return isinstance(datasource, str) and datasource in _DATASOURCE_REFS


def _panels(panels: list[Any], key: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every panel with its JSON path, rows' nested panels included."""
    for i, panel in enumerate(panels):
        if isinstance(panel, dict):
            yield f"{key}[{i}]", panel
            yield from _panels(panel.get("panels") or [], f"{key}[{i}].panels")


def validate_dashboard(path: str | Path) -> list[Problem]:
    """Every problem with the dashboard at ``path`` (empty when it is fine)."""
    try:
        board = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        return [Problem("", f"invalid JSON: {err}")]
    if not isinstance(board, dict):
        return [Problem("", "a dashboard is a JSON object")]
    variables = (board.get("templating") or {}).get("list") or []
    return [*_check_variables(variables), *_check_panels(board.get("panels") or [])]


def _check_variables(variables: list[Any]) -> Iterator[Problem]:
    declared = [v for v in variables if isinstance(v, dict) and v.get("name") == DATASOURCE_VAR]
    if not any(v.get("type") == "datasource" and v.get("query") == "prometheus" for v in declared):
        yield Problem(
            "templating.list", 'no "datasource" variable of type datasource, query "prometheus"'
        )
    for i, var in enumerate(variables):
        if not isinstance(var, dict) or var.get("type") != "query":
            continue
        key, owner = f"templating.list[{i}]", f"variable {var.get('name')!r}"
        yield from _fixed_datasource(f"{key}.datasource", owner, var.get("datasource"))
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        for metric in unknown_metrics(query_metric_names(query)):
            yield Problem(f"{key}.query", f"{owner}: unknown metric {metric}")


def _check_panels(panels: list[Any]) -> Iterator[Problem]:
    for key, panel in _panels(panels, "panels"):
        targets, owner = panel.get("targets") or [], f"panel {panel.get('title', '')!r}"
        if targets:
            yield from _fixed_datasource(f"{key}.datasource", owner, panel.get("datasource"))
        for j, target in enumerate(targets):
            if "datasource" in target:  # absent: the panel's
                yield from _fixed_datasource(
                    f"{key}.targets[{j}].datasource", owner, target["datasource"]
                )
            for metric in unknown_metrics(metric_names(target.get("expr", ""))):
                yield Problem(f"{key}.targets[{j}].expr", f"{owner}: unknown metric {metric}")


def _fixed_datasource(key: str, owner: str, datasource: Any) -> list[Problem]:
    if _is_var_ref(datasource):
        return []
    return [Problem(key, f"{owner} must use ${{{DATASOURCE_VAR}}}, not {datasource!r}")]
