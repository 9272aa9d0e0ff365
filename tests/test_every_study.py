"""Every registered study runs end to end at one tiny seed (read from the registry: a new study or group is
picked up with no edit here). Configs shrink by field name; a study whose data are not on this machine
(an optional data package) is skipped with the reason its experiment's own check gives."""

from __future__ import annotations

import dataclasses

import pytest

from torchfpe.data import DataError
from torchfpe.lab import api
from torchfpe.lab.experiments.registry import experiment
from torchfpe.lab.experiments.studies import groups, study_configs

#: Tiny values by config field: whichever experiment has the field gets them (fields it lacks are left out).
TINY = {"warmup_epochs": 1, "epochs_after": 1, "warmup_steps": 2, "steps_after": 2, "train_size": 48,
        "test_size": 48, "trials": 200, "eval_bytes": 128, "context": 8, "d_model": 16, "layers": 1,
        "steps_per_epoch": 2, "embeddings": "synthetic-100"}

STUDIES = [(group, name) for group, studies in groups().items() for name in studies]


def tiny_overrides(group: str, name: str) -> dict:
    """The study's config shrunk: the tiny fields it has, every swept axis at its first value."""
    study = groups()[group][name]
    fields = api.config_fields(study.experiment)
    overrides = {field: value for field, value in TINY.items() if field in fields}
    overrides.update({axis: [values[0]] for axis, values in study.axes.items()})
    return overrides


#: Test examples kept per seed: the real test sets (10000 images) would dominate a smoke run.
TEST_EXAMPLES = 64


def small_test_sets(monkeypatch, config_class: type) -> None:
    """The experiment's task (if it is a protocol task) measures on the first test examples only."""
    task = getattr(config_class, "task", None)
    if task is None:
        return
    data = task.data

    def first_examples(config):
        full = data(config)
        if full.y_test is None or len(full.y_test) <= TEST_EXAMPLES:
            return full
        return dataclasses.replace(full, x_test=full.x_test[:TEST_EXAMPLES], y_test=full.y_test[:TEST_EXAMPLES])

    monkeypatch.setattr(task, "data", first_examples)


@pytest.mark.parametrize("group, name", STUDIES, ids=[f"{g}-{n}" for g, n in STUDIES])
def test_every_registered_study_runs_at_one_tiny_seed(group, name, tmp_path, monkeypatch):
    study = groups()[group][name]
    small_test_sets(monkeypatch, experiment(study.experiment).config)
    overrides = tiny_overrides(group, name)
    registered = experiment(study.experiment)
    config = registered.make_config(**study_configs(study, 1, overrides)[0])
    try:
        registered.check_config(config)
    except (DataError, ImportError) as error:  # an optional data set or package absent here
        pytest.skip(f"{group} {name}: {type(error).__name__}: {str(error)[:120]}")
    report = api.run_study(group, name, seeds=1, overrides=overrides, out=tmp_path, backend="local", quiet=True)
    assert report.is_file() and (tmp_path / "records.csv").is_file()
    assert "Raw per-run results" in report.read_text()
