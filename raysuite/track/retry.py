"""Retrying MLflow calls, so that a tracking fault costs a metric, never a sweep.

What is retried (:func:`transient`): connection errors and timeouts, the ones MLflow's
REST client raises once its own HTTP retries are spent (an ``MlflowException`` whose
context is a ``requests`` error: MLflow re-raises them without a cause, so the context
chain is the only trace), and MLflow errors whose code says "try again"
(``TEMPORARILY_UNAVAILABLE`` is what ``SqlAlchemyStore`` makes of sqlite's ``database is
locked``, ``REQUEST_LIMIT_EXCEEDED``/``RESOURCE_EXHAUSTED`` are HTTP 429, and a server's own
``INTERNAL_ERROR`` answer). Anything else (a bad value, a missing run) fails at once.

How long: :data:`DELAYS_S` between attempts, and no attempt starts after :data:`BUDGET_S`.
MLflow's REST client already retries each HTTP request on connection errors and
408/429/5xx (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, default 7, with
``MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`` 2: urllib3 sleeps 0, 4, 8, 16, 32, 64, 120 s, about
4 min per request against a stopped server). The budget keeps the two from multiplying: a
request that took longer than the budget is not tried again. Set
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` lower (0 hands all retrying to this module) to give up
on a dead server in seconds.

An outage: after a call fails on a transient error, tracking counts as down for
:data:`COOLDOWN_S`, or :data:`OUTAGE_FACTOR` times as long as the failed call took if that
is longer, and calls in that window raise :class:`TrackingDown` at once: each of them would
wait out the whole budget again, and a Tune callback that waits stalls every trial. So a
dead server costs the sweep driver at most about a fifth of its time. Cleanup calls
(``during_outage=True``: ending runs) are always attempted.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any, ParamSpec, TypeVar

import requests
from mlflow.exceptions import MlflowException, RestException

DELAYS_S = (0.5, 1.0, 2.0, 4.0)  # between attempts: at most len + 1 attempts
BUDGET_S = 15.0  # no attempt starts later than this after the first
COOLDOWN_S = 30.0  # after a transient failure, calls are skipped this long, at least
OUTAGE_FACTOR = 4.0  # ... or this many times as long as the failed call took
TRANSIENT_CODES = frozenset({"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"})

sleep = time.sleep  # tests replace it
clock = time.monotonic
_down_until = float("-inf")

P = ParamSpec("P")
T = TypeVar("T")


class TrackingDown(Exception):
    """A call skipped without trying: a recent one found tracking unavailable."""


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def transient(err: BaseException) -> bool:
    """Whether ``err`` may go away if the call is made again (see the module's docstring)."""
    for e in _chain(err):
        if isinstance(e, TrackingDown | requests.ConnectionError | requests.Timeout | requests.exceptions.RetryError
                      | ConnectionError | TimeoutError):  # fmt: skip
            return True
        if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
            return True
        if isinstance(e, MlflowException) and (
            e.error_code in TRANSIENT_CODES or (isinstance(e, RestException) and e.error_code == "INTERNAL_ERROR")
        ):
            return True
    return False


def describe(err: BaseException) -> str:
    """The error for a warning: its type and the start of its message (the message of a
    failed request ends with the server's response body, which can be long)."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}{'...' if len(text) > 300 else ''}"


def warn(message: str) -> None:
    print(f"[raysuite] tracking: {message}", flush=True)


# Not Callable[P, T] with *args: P.args: PEP 612 allows no keyword (during_outage) between them.
def retried(fn: Callable[..., T], *args: Any, during_outage: bool = False, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``, tried again after each transient error, :data:`DELAYS_S`
    apart, while within :data:`BUDGET_S`; the last error is raised. Raises
    :class:`TrackingDown` without calling ``fn`` within :data:`COOLDOWN_S` of a transient
    failure, unless ``during_outage``. ``fn`` must be safe to repeat (raysuite's writes
    are: a metric logged twice with its timestamp is stored once)."""
    global _down_until
    if not during_outage and clock() < _down_until:
        raise TrackingDown(f"skipped for {_down_until - clock():.0f} s more: tracking was unavailable")
    start, delays = clock(), list(DELAYS_S)
    while True:
        try:
            value = fn(*args, **kwargs)
        except Exception as err:
            if transient(err) and delays and clock() + delays[0] - start <= BUDGET_S:
                sleep(delays.pop(0))
                continue
            if transient(err):
                window = max(COOLDOWN_S, OUTAGE_FACTOR * (clock() - start))
                if clock() >= _down_until:
                    warn(f"unavailable ({describe(err)}); MLflow calls are skipped for {window:.0f} s")
                _down_until = clock() + window
            else:  # not an outage
                _down_until = float("-inf")
            raise
        _down_until = float("-inf")
        return value


def attempt(what: str, fn: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> bool:
    """:func:`retried`, during an outage too, for cleanup paths: a failure is printed
    (``what`` failed, and why), never raised. Returns whether the call succeeded."""
    try:
        retried(fn, *args, during_outage=True, **kwargs)
    except Exception as err:  # noqa: BLE001 - cleanup must go on
        warn(f"could not {what}: {describe(err)}")
        return False
    return True
