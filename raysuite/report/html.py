"""``report.html``: one self-contained page (inline CSS, PNGs embedded as base64 data URIs,
no script, no font or network fetch), so it opens offline, from an MLflow artifact
download, or attached to an e-mail."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 12px; margin: .5em 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
tr.baseline td { background: #f6f6f6; color: #555; }
.note { color: #555; font-size: 12px; } img { max-width: 100%; border: 1px solid #eee; margin: .5em 0; }
code { font-size: 12px; background: #f3f3f3; padding: 0 2px; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 1em; } dt { font-weight: 600; }
"""


def number(value: float) -> str:
    """A number as the tables print it: 4 significant digits, empty for NaN."""
    return "" if math.isnan(value) else (f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return number(value)
    return html.escape(str(value))


def table(frame: pd.DataFrame, highlight: Sequence[int] = ()) -> str:
    """An HTML table of ``frame`` (numbers to 4 significant digits); rows whose position is
    in ``highlight`` get the ``baseline`` class."""
    if frame.empty:
        return '<p class="note">(empty)</p>'
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    body = []
    for i, row in enumerate(frame.itertuples(index=False)):
        cls = ' class="baseline"' if i in highlight else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def image(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(Path(path).stem)}" src="data:image/png;base64,{data}"></figure>'


def page(title: str, facts: dict[str, str], sections: list[tuple[str, str]]) -> str:
    """``sections``: (heading, HTML body) in order; ``facts`` a definition list at the top."""
    dl = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in facts.items())
    parts = "".join(f"<h2>{html.escape(h)}</h2>\n{body}\n" for h, body in sections)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1><dl>{dl}</dl>\n{parts}</body></html>\n")  # fmt: skip
