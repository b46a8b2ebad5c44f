"""Reading a spec's YAML: a safe loader that refuses duplicate keys and alias bombs, and
``${VAR}`` / ``${VAR:-default}`` expansion in the parsed values (never in comments or keys)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from raysuite.spec_errors import SpecError

MAX_NODES = 100_000  # a spec holds hundreds; aliases nesting aliases ("billion laughs") billions
MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(yaml.YAMLError):
    """A document the loader refuses: ``key`` names where (may be empty)."""

    def __init__(self, key: str, message: str):
        self.key, self.message = key, message
        super().__init__(message)


class SpecLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping repeating a key, and a document whose
    aliases expand it beyond :data:`MAX_NODES` nodes (or into itself): nine anchors of nine
    aliases each are 81 aliases and 9**9 nodes once something walks the result."""

    def compose_document(self) -> Node | None:
        node = super().compose_document()
        if node is not None:
            _expanded_size(node, {}, set())
        return node

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag != MERGE_TAG:
                key = self.construct_object(key_node)
                if key in seen:
                    raise _Refused(str(key), f"duplicate key (line {key_node.start_mark.line + 1})")
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: Node, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """Nodes under ``node`` with every alias expanded, each shared node counted once per use
    (``sizes`` memoises, so this walks each distinct node once)."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise _Refused("", "an alias refers to the node that contains it (a recursive document)")
    open_nodes.add(id(node))
    children: list[Node] = []
    if isinstance(node, SequenceNode):
        children = list(node.value)
    elif isinstance(node, MappingNode):
        children = [n for pair in node.value for n in pair]
    size = 1 + sum(_expanded_size(child, sizes, open_nodes) for child in children)
    open_nodes.discard(id(node))
    if size > MAX_NODES:
        raise _Refused("", f"its aliases expand it beyond {MAX_NODES} YAML nodes (an alias bomb?)")
    sizes[id(node)] = size
    return size


def load_yaml(text: str, path: Any, key: str = "") -> Any:
    """``text`` parsed with :class:`SpecLoader`; a problem is a :class:`SpecError` naming
    ``path`` and ``key`` (e.g. the ``--set`` item the text came from)."""
    try:
        return yaml.load(text, Loader=SpecLoader)  # a SafeLoader: no Python objects
    except _Refused as err:
        raise SpecError(path, ".".join(k for k in (key, err.key) if k), err.message) from None
    except yaml.YAMLError as err:
        hint = '\n(a ${VAR} inside [...] or {...} needs quotes: "${VAR}")' if "${" in text else ""
        raise SpecError(path, key, f"invalid YAML: {err}{hint}") from None


_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(text: str, env: Mapping[str, str] | None = None) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}`` as a POSIX shell would (empty counts as
    unset) and ``$$`` to ``$``; the value goes in as text. Raises KeyError naming an unset
    variable without a default."""
    env = os.environ if env is None else env

    def sub(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        value = env.get(match.group(1))
        if value:
            return value
        if match.group(2) is not None:
            return match.group(2)
        raise KeyError(match.group(1))

    return _VAR.sub(sub, text)


def expand_tree(tree: Any, path: Any, env: Mapping[str, str] | None = None, key: str = "") -> Any:
    """``tree`` with :func:`expand_env` applied to every string value (keys stay as written);
    an unset variable is a :class:`SpecError` naming the key whose value names it."""
    if isinstance(tree, dict):
        return {k: expand_tree(v, path, env, f"{key}.{k}" if key else str(k)) for k, v in tree.items()}
    if isinstance(tree, list):
        return [expand_tree(v, path, env, f"{key}[{i}]") for i, v in enumerate(tree)]
    if isinstance(tree, str):
        try:
            return expand_env(tree, env)
        except KeyError as err:
            raise SpecError(path, key, f"environment variable ${{{err.args[0]}}} is unset and has no default") from None
    return tree
