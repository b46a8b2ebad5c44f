"""Tune callbacks that never end a sweep: Tune turns an exception in any callback hook into
a TuneError that stops every study, so a tracking fault (an MLflow server gone, a metrics
agent down) is printed and the hook skipped."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


def guarded(hook: Callable[..., None]) -> Callable[..., None]:
    """A fault in tracking (an MLflow server gone, a bad value) is reported, never raised:
    Tune turns a callback's exception into a TuneError that ends the whole sweep."""

    @functools.wraps(hook)
    def safe(*args: Any, **kwargs: Any) -> None:
        try:
            hook(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            text = " ".join(str(err).split())[:300]  # a failed request's message ends with the response body
            print(f"[raysuite] tracking: {hook.__name__} failed and was skipped: {type(err).__name__}: {text}", flush=True)

    return safe
