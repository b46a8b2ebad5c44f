"""Bad specs, one per row: ``raysuite validate`` exits 2 and its message names the file,
the key at fault and what is wrong. A row is a spec text (``BASE`` with replacements, or
its own) and the ``--set`` items (or other validate options) given with it."""

import textwrap
from dataclasses import dataclass

import pytest

from raysuite.cli import main

BASE = """
name: t
method: iou_simsiam_seg
data: {format: flare22, root: /nonexistent/raysuite-bad-specs, synthetic_if_missing: true}
stages:
  pretrain: {epochs: 2, iou_interval: [0.3, 0.6]}
  finetune: {epochs: 4}
search:
  grid: {pretrain.iou_interval: [[0.3, 0.6], null]}
objective: {metric: val/dice}
"""

WEAK = """
name: t
method: weak_localization
data: {format: chestxray14, root: /nonexistent/raysuite-bad-specs, synthetic_if_missing: true}
objective: {metric: val/loc_acc_iou, mode: max, scope: last}
"""

OPTUNA = "search:\n  optuna:\n    n_trials: 4\n    space:\n      {}\n"
BOMB = "".join(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]\n" for i in range(1, 9))


@dataclass(frozen=True)
class Bad:
    id: str
    key: str  # in the message (a key path, or the file's problem)
    says: str  # also in the message
    edits: tuple[tuple[str, str], ...] = ()  # replacements of BASE
    text: str | None = None  # the whole spec instead of BASE
    args: tuple[str, ...] = ()  # --set items and other options of validate
    extra: str = ""  # appended to the spec

    def spec(self) -> str:
        text = BASE if self.text is None else self.text
        for old, new in self.edits:
            assert old in text, old
            text = text.replace(old, new)
        return textwrap.dedent(text) + self.extra


def optuna(space: str) -> tuple[tuple[str, str], ...]:
    """BASE with its grid replaced by an Optuna search over ``space`` (a flow mapping)."""
    return (("search:\n  grid: {pretrain.iou_interval: [[0.3, 0.6], null]}\n", OPTUNA.format(space)),)


CASES = [
    # 1. metric keys
    Bad("misspelled-objective", "objective.metric", "did you mean `val/dice`", (("val/dice", "val/dcie"),)),
    Bad("objective-of-no-stage", "objective.metric", "reports no metric", (("val/dice", "pretrain/accuracy"),)),
    Bad("running-best-of-an-unmonitored-metric", "objective.scope", "scope: last", (("val/dice", "val/dice_bg"),)),
    Bad("objective-mode", "objective.mode", "'max' or 'min'", (("metric: val/dice", "metric: val/dice, mode: up"),)),
    # 2. Optuna values against the stage's fields
    Bad("randint-below-a-bound", "search.optuna.space.finetune.epochs", "greater than or equal to 1",
        optuna("finetune.epochs: {randint: [-9, -1]}")),
    Bad("uniform-above-a-bound", "search.optuna.space.pretrain.iou_min", "less than or equal to 1",
        optuna("{pretrain.iou_min: {uniform: [0.5, 3]}, pretrain.iou_width: {uniform: [0.1, 0.3]}}")),
    Bad("float-range-on-an-int-field", "search.optuna.space.finetune.epochs", "fractional",
        optuna("finetune.epochs: {uniform: [2, 8]}")),
    Bad("bad-choice", "search.optuna.space.finetune.patience", "choice 'soon'",
        optuna("finetune.patience: {choice: [5, soon]}")),
    Bad("choice-breaking-a-cross-field-rule", "search.optuna.space.pretrain.iou_min", "go together",
        optuna("pretrain.iou_min: {choice: [0.1, 0.2]}")),
    Bad("empty-choice", "search.optuna.space.finetune.lr.choice", "at least 1 item", optuna("finetune.lr: {choice: []}")),
    Bad("misspelled-distribution", "search.optuna.space.finetune.lr", "unknown key `unifrm`: did you mean `uniform`",
        optuna("finetune.lr: {unifrm: [0.001, 0.01]}")),
    Bad("two-distributions", "search.optuna.space.finetune.lr", "exactly one key",
        optuna("finetune.lr: {uniform: [0.001, 0.01], choice: [0.1]}")),
    Bad("loguniform-from-zero", "search.optuna.space", "positive bounds", optuna("finetune.lr: {loguniform: [0, 0.1]}")),
    Bad("reversed-range", "search.optuna.space", "must be below", optuna("finetune.lr: {uniform: [0.1, 0.01]}")),
    Bad("space-key-of-no-field", "search.optuna.space.finetune.warmup_epoch", "did you mean `warmup_epochs`",
        optuna("finetune.warmup_epoch: {randint: [0, 4]}")),
    # 3. sweep size
    Bad("too-many-grid-trials", "search.max_trials", "10201 trials", args=(
        f"--set=search.grid.finetune.lr={[round(0.001 * (i + 1), 3) for i in range(101)]}",
        f"--set=search.grid.pretrain.lr={[round(0.001 * (i + 1), 3) for i in range(101)]}",
        "--set=search.grid.pretrain.iou_interval=[[0.3, 0.6]]")),
    Bad("too-many-optuna-trials", "search.max_trials", "1000000000000000000 Optuna trials",
        optuna("finetune.lr: {uniform: [0.001, 0.01]}") + (("n_trials: 4", "n_trials: 1000000000000000000"),)),
    Bad("max-trials-zero", "search.max_trials", "greater than or equal to 1", args=("--set=search.max_trials=0",)),
    # 4. YAML itself
    Bad("alias-bomb", "", "alias bomb", extra="l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + BOMB),
    Bad("recursive-alias", "", "recursive", extra="loop: &loop [*loop]\n"),
    Bad("duplicate-key", "name", "duplicate key (line 2)", text="name: t\nname: u\n"),
    Bad("empty-file", "", "must be a YAML mapping", text=""),
    Bad("not-a-mapping", "", "must be a YAML mapping", text="- name: t\n"),
    Bad("bad-yaml", "", "invalid YAML", text="name: [t\n"),
    # 5. booleans are no numbers
    Bad("bool-epochs", "stages.pretrain.epochs", "boolean", (("epochs: 2,", "epochs: true,"),)),
    Bad("bool-in-a-tuple", "stages.pretrain.iou_interval[0]", "boolean", (("iou_interval: [0.3, 0.6]}", "iou_interval: [true, 0.6]}"),)),
    Bad("bool-workers", "resources.workers_per_trial", "boolean", extra="resources: {workers_per_trial: true}\n"),
    Bad("bool-grid-value", "search.grid.finetune.epochs[0]", "boolean", args=("--set=search.grid.finetune.epochs=[false]",)),
    Bad("bool-randint", "search.optuna.space.finetune.epochs.randint[0]", "boolean",
        optuna("finetune.epochs: {randint: [true, 4]}")),
    # 6. ${VAR} in values
    Bad("unset-variable", "data.root", "${RAYSUITE_TEST_UNSET} is unset", (("/nonexistent/raysuite-bad-specs", '"${RAYSUITE_TEST_UNSET}/x"'),)),
    # 7. unknown keys, named with the closest valid one
    Bad("top-level-typo", "methd", "unknown key `methd`: did you mean `method`", (("method:", "methd:"),)),
    Bad("nested-typo", "resources.max_concurent_trials", "did you mean `max_concurrent_trials`",
        extra="resources: {max_concurent_trials: 2}\n"),
    Bad("stage-field-typo", "stages.pretrain.epoch", "did you mean `epochs`", (("epochs: 2,", "epoch: 2,"),)),
    Bad("unknown-stage", "stages.pretrian", "did you mean `pretrain`", (("  pretrain: {epochs", "  pretrian: {epochs"),)),
    Bad("grid-key-typo", "search.grid.pretrain.iou_intervl", "did you mean `iou_interval`", (("pretrain.iou_interval:", "pretrain.iou_intervl:"),)),
    Bad("grid-key-of-no-stage", "search.grid.pretrian.lr", "did you mean `pretrain`", args=("--set=search.grid.pretrian.lr=[0.1]",)),
    Bad("unknown-method", "method", "unknown method 'iou_simsiam'", (("method: iou_simsiam_seg", "method: iou_simsiam"),)),
    Bad("fault-drill-stage", "faults.stage", "did you mean `finetune`", extra="faults: {stage: finetun, fail_once_at_epoch: 1}\n"),
    # 8. --set
    Bad("set-bad-yaml", "--set pretrain.epochs=[1", "invalid YAML", args=("--set=pretrain.epochs=[1",)),
    Bad("set-no-value", "--set pretrain.epochs", "expects key=value", args=("--set=pretrain.epochs",)),
    Bad("set-into-a-value", "--set name.x=1", "'name' is not a mapping", args=("--set=name.x=1",)),
    Bad("set-shorthand-typo", "stages.finetune.lrr", "did you mean `lr`", args=("--set=finetune.lrr=0.1",)),
    Bad("set-bool-shorthand", "stages.finetune.epochs", "boolean", args=("--set=finetune.epochs=yes",)),
    # 10. data (validate --data; sweep and train always check)
    Bad("missing-data-root", "data.root", "is not a directory", (("synthetic_if_missing: true", "synthetic_if_missing: false"),),
        args=("--data",)),
    # other values
    Bad("negative-workers", "resources.workers_per_trial", "greater than or equal to 1", extra="resources: {workers_per_trial: -2}\n"),
    Bad("asha-grace-period", "search.scheduler.asha.grace_period", "greater than or equal to 1",
        args=("--set=search.scheduler={asha: {grace_period: 0, max_t: 4}}",)),
    Bad("asha-reduction-factor", "search.scheduler.asha.reduction_factor", "greater than 1",
        args=("--set=search.scheduler={asha: {reduction_factor: 1, max_t: 4}}",)),
    Bad("asha-max-t-below-epochs", "search.scheduler.asha.max_t", "below finetune.epochs",
        args=("--set=search.scheduler={asha: {grace_period: 1, max_t: 3}}",)),
    Bad("unknown-data-format", "data.format", "Input should be", (("format: flare22", "format: flare"),)),
    Bad("format-of-another-method", "data.format", "reads 'flare22'", (("format: flare22", "format: mura"),)),
    Bad("split-ratios", "data.split", "sum to 1", (("synthetic_if_missing: true}", "synthetic_if_missing: true, split: {ratios: [0.5, 0.5, 0.5]}}"),)),
    Bad("repeats-of-no-seed", "search.repeats.finetune.lr", "vary a stage's seed", args=("--set=search.repeats.finetune.lr=2",)),
    Bad("zero-repeats", "search.repeats", "at least 1", args=("--set=search.repeats.finetune.seed=0",)),
    Bad("bad-interval", "stages.pretrain", "i_min > i_max", (("iou_interval: [0.3, 0.6]}", "iou_interval: [0.7, 0.6]}"),)),
    Bad("empty-name", "name", "at least 1 character", (("name: t", "name: ''"),)),
    # pretrained weights: a name or library source that means nothing, a file that is not there
    Bad("unknown-weights-name", "stages.train.weights", "resnet50 has no 'imagnet' weights", text=WEAK,
        extra="stages: {train: {weights: imagnet}}\n"),
    Bad("unknown-torchvision-enum", "search.grid.train.weights[1]", "not a torchvision weight enum", text=WEAK,
        extra="search: {grid: {train.weights: [imagenet, 'torchvision:ResNet50_Weights.IMAGENET9K']}}\n"),
    Bad("missing-weights-file", "train.weights", "no such weights file", text=WEAK, args=("--data",),
        extra="stages: {train: {weights: /nonexistent/r50.pth}}\n"),
]


def test_the_table_is_large_and_its_ids_unique():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_spec_exits_2_naming_the_key(case, tmp_path, capsys, monkeypatch, write_spec):
    monkeypatch.delenv("RAYSUITE_TEST_UNSET", raising=False)
    path = write_spec(case.spec())
    assert main(["validate", str(path), *case.args]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: {case.key}" in err, err
    assert case.says in err, err


def test_the_base_spec_is_good(tmp_path, capsys, write_spec):
    path = write_spec(BASE)
    assert main(["validate", str(path)]) == 0
