"""Repeats as one unit of decision: the rung bookkeeping of RepeatASHA on fake results (no
Ray cluster), and RepeatSearcher telling a real OptunaSearch one value per configuration,
a pruned configuration as pruned, and a duplicate suggestion without training it."""

import math

import optuna
import pytest
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from raysuite.tune.outcome import COMPLETE, classify
from raysuite.tune.repeat_asha import RungBook, rungs
from raysuite.tune.repeat_search import RepeatSearcher

STOP, GO = TrialScheduler.STOP, TrialScheduler.CONTINUE


def test_rungs_stop_below_max_t():
    assert rungs(1, 10, 3) == [1, 3, 9]
    assert rungs(6, 18, 3) == [6]
    assert rungs(5, 30, 3) == [5, 15]


def _book(repeats=2):
    book = RungBook([2], reduction_factor=2, repeats=repeats)
    for cfg in "abc":
        for r in range(repeats):
            book.add(f"{cfg}{r}", cfg)
    return book


def test_a_configuration_is_decided_on_the_mean_of_its_repeats():
    book = _book()
    # a: repeats 0.9 and 0.1 (mean 0.5); b: 0.6 and 0.6 (mean 0.6)
    assert book.result("a0", 2, 0.9) == GO  # a1 has not reached the rung: no decision yet
    assert book.result("a1", 2, 0.1) == GO  # a is the first configuration at the rung: kept
    assert book.result("b0", 2, 0.6) == GO
    assert book.result("b1", 2, 0.6) == GO  # b (0.6) beats a's mean: kept
    # c: 0.95 and 0.0 -> mean 0.475, below the median of {0.5, 0.6, 0.475}: cut as a whole,
    # although c0 alone (0.95) was the best trial seen at this rung
    assert book.result("c0", 2, 0.95) == GO
    assert book.result("c1", 2, 0.0) == STOP
    assert book.pruned == {"c0": 2, "c1": 2}
    assert book.result("c0", 3, 0.97) == STOP  # the sibling that ran on is stopped too
    assert book.result("a0", 3, 0.9) == GO
    book.end("c1"), book.end("c0")  # their ends decide nothing more: the rung stays 2
    assert book.pruned == {"c0": 2, "c1": 2} and book.rung_means[2] == [0.5, 0.6, 0.475]


def test_a_pruned_configuration_is_not_decided_again_at_later_rungs():
    book = RungBook([1, 3], reduction_factor=2, repeats=2)
    for cfg in "ab":
        book.add(f"{cfg}0", cfg), book.add(f"{cfg}1", cfg)
    for t, v in (("a0", 0.9), ("a1", 0.9), ("b0", 0.1), ("b1", 0.1)):
        book.result(t, 1, v)
    assert book.pruned == {"b0": 1, "b1": 1}
    book.result("a0", 3, 0.9), book.result("a1", 3, 0.9)
    book.end("b0"), book.end("b1")  # ended at rung 1 with their last values
    assert book.pruned == {"b0": 1, "b1": 1} and book.rung_means[3] == [0.9]


def test_per_trial_asha_would_have_split_the_configuration():
    """The same numbers judged trial by trial (what Ray's ASHA does) keep c0 and cut c1."""
    values = {"a0": 0.9, "a1": 0.1, "b0": 0.6, "b1": 0.6, "c0": 0.95, "c1": 0.0}
    seen: list[float] = []
    kept = {}
    for trial, v in values.items():
        seen.append(v)
        cutoff = sorted(seen)[len(seen) // 2] if len(seen) > 1 else -math.inf
        kept[trial] = v >= cutoff
    assert kept["c0"] and not kept["c1"]  # the split RungBook refuses


def test_an_ended_repeat_counts_with_its_last_value():
    book = _book()
    book.result("a0", 1, 0.4)
    book.end("a0")  # stopped early (patience) before the rung
    assert book.result("a1", 2, 0.6) == GO
    assert book.values["a"][2] == {"a0": 0.4, "a1": 0.6}
    assert 2 in book.decided["a"]


def test_results_without_the_objective_or_progress_continue():
    book = _book()
    assert book.result("a0", None, None) == GO  # a pretraining epoch
    assert book.result("a0", 2, None) == GO
    assert book.values["a"][2] == {}


class _FakeInner(Searcher):
    """Suggests the listed configurations in order and records what it was told."""

    def __init__(self, configs):
        super().__init__(metric="m", mode="max")
        self.configs, self.told = list(configs), {}

    def suggest(self, trial_id):
        return self.configs.pop(0) if self.configs else Searcher.FINISHED

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.told[trial_id] = "fail" if error else ("pruned" if result is None else result["m"])


def test_duplicate_suggestions_are_answered_from_the_original():
    inner = _FakeInner([{"s.x": 1}, {"s.x": 1}, {"s.x": 2}])
    search = RepeatSearcher(inner, repeats=2, budget=3)
    search.set_search_properties("m", "max", {})
    a0, a1 = search.suggest("t0"), search.suggest("t1")
    assert a0 == {"s.x": 1, "__trial_index__": 0} and a1 == {"s.x": 1, "__trial_index__": 1}
    b0 = search.suggest("t2")  # the duplicate {"s.x": 1} is skipped: no Tune trial for it
    assert b0 == {"s.x": 2, "__trial_index__": 0} and search.duplicates == 1
    search.on_trial_complete("t0", {"m": 0.2, COMPLETE: 1})
    assert inner.told == {}  # one repeat is not a configuration
    search.on_trial_complete("t1", {"m": 0.4, COMPLETE: 1})
    assert inner.told == {"t0-s0": pytest.approx(0.3), "t2-s1": pytest.approx(0.3)}  # the duplicate too
    assert search.suggest("t3") == {"s.x": 2, "__trial_index__": 1}
    assert search.suggest("t4") == Searcher.FINISHED  # 3 suggestions asked: the budget


def test_optuna_hears_a_pruned_configuration_as_pruned():
    inner = OptunaSearch(space={"s.lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)},
                         metric="m", mode="max", sampler=optuna.samplers.TPESampler(seed=0))  # fmt: skip
    search = RepeatSearcher(inner, repeats=2, budget=2)
    trials = [f"t{i}" for i in range(4)]
    assert all(isinstance(search.suggest(t), dict) for t in trials)
    # configuration 1: both repeats complete; configuration 2: one repeat stopped by ASHA
    # (its last result still carries the metric, which Ray's Repeater would have averaged)
    search.on_trial_complete("t0", {"m": 0.5, COMPLETE: 1})
    search.on_trial_complete("t1", {"m": 0.7, COMPLETE: 1})
    search.on_trial_complete("t2", {"m": 0.9, COMPLETE: 1})
    search.on_trial_complete("t3", {"m": 0.8})
    states = [(t.state, t.value) for t in inner._ot_study.trials]
    assert states[0] == (optuna.trial.TrialState.COMPLETE, pytest.approx(0.6))
    assert states[1] == (optuna.trial.TrialState.PRUNED, None)


def test_a_failed_repeat_fails_the_configuration():
    inner = _FakeInner([{"s.x": 1}])
    search = RepeatSearcher(inner, repeats=2, budget=1)
    search.set_search_properties("m", "max", {})
    search.suggest("t0"), search.suggest("t1")
    search.on_trial_complete("t0", {"m": 0.5, COMPLETE: 1})
    search.on_trial_complete("t1", None, error=True)
    assert inner.told == {"t0-s0": "fail"}


def test_outcome_classification():
    assert classify({"m": 1, COMPLETE: 1.0}) == "complete"
    assert classify({"m": 1}) == "pruned"
    assert classify({"raysuite/diverged": 1.0}) == "diverged"
    assert classify({"m": 1}, error=True) == "failed"


def test_tune_saves_and_restores_the_groups_with_optuna(tmp_path):
    """Tune's SearchGenerator checkpoints a wrapper by get_state and the wrapped searcher by
    its file (the first Optuna study of a sweep died here on NotImplementedError)."""
    from ray.tune.search import SearchGenerator

    def make():
        inner = OptunaSearch(metric="m", mode="max", sampler=optuna.samplers.TPESampler(seed=0))
        search = RepeatSearcher(inner, repeats=2, budget=2)
        search.set_search_properties("m", "max", {"s.lr": __import__("ray").tune.uniform(0, 1)})
        return SearchGenerator(search)

    first = make()
    config = first.searcher.suggest("t0")
    first.save_to_dir(str(tmp_path), session_str="s")
    second = make()
    second.restore_from_dir(str(tmp_path))
    # the restored wrapper owes the same configuration's second repeat
    assert second.searcher.suggest("t1") == {**config, "__trial_index__": 1}
    assert len(second.searcher.searcher._ot_study.trials) == 1
