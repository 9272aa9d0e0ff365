"""Phase 2 in another layout gives the same records (issue 21): every registered study group, at one tiny
seed, trained one model at a time with ``layout="masked"`` and ``layout="packed"`` (read from the registry:
a new group is picked up with no edit here). Each group's config names every variant its studies name, so
the controls (DropConnect, static-sparse, wide, @carry, budgets) are covered too."""

from __future__ import annotations

import math
import numbers

import pytest

from test_every_study import small_test_sets, tiny_overrides
from torchfpe.core.validation import InvalidParameterError
from torchfpe.data import DataError
from torchfpe.lab import api, train_layout
from torchfpe.lab.experiments.registry import experiment
from torchfpe.lab.experiments.studies import groups, study_configs
from torchfpe.lab.kinds import fraction_fields

GROUPS = list(groups())
#: A fraction (an accuracy) may differ by one example of the smallest set (48 at the tiny sizes).
FRACTION_TOLERANCE = 1 / 48 + 1e-9
RELATIVE_TOLERANCE = 1e-4


def group_config(group: str):
    """The group's first study at its tiny size, naming every variant any study of the group names."""
    studies = list(groups()[group].values())
    registered = experiment(studies[0].experiment)
    variants: list[str] = []
    for study in studies:
        if study.experiment != registered.name:
            continue
        for config in study_configs(study, 1, tiny_overrides(group, study.name)):
            variants += [v for v in registered.make_config(**config).variants if v not in variants]
    first = study_configs(studies[0], 1, tiny_overrides(group, studies[0].name))[0]
    return registered, registered.make_config(**{**first, "variants": "+".join(variants)})


def close(name: str, masked, packed) -> bool:
    if name.endswith("_seconds"):  # wall time (finetune records each variant's): a measurement, not a result
        return True
    masked, packed = (value.tolist() if hasattr(value, "tolist") else value for value in (masked, packed))
    if isinstance(masked, list) and isinstance(packed, list):
        return len(masked) == len(packed) and all(close(name, a, b) for a, b in zip(masked, packed))
    if isinstance(masked, bool) or not isinstance(masked, numbers.Real) or not isinstance(packed, numbers.Real):
        return masked == packed
    if math.isnan(masked) or math.isnan(packed):
        return math.isnan(masked) and math.isnan(packed)
    if name in fraction_fields():
        return abs(masked - packed) <= FRACTION_TOLERANCE
    return abs(masked - packed) <= RELATIVE_TOLERANCE * max(abs(masked), abs(packed), 1e-6)


@pytest.mark.parametrize("group", GROUPS)
def test_records_do_not_depend_on_the_layout_phase_2_trains_in(group, monkeypatch):
    registered, config = group_config(group)
    if not registered.layout:
        pytest.skip(f"{group}: the {registered.name} experiment trains no tensors (no layout to choose)")
    small_test_sets(monkeypatch, registered.config)
    try:
        registered.check_config(config)
    except (DataError, ImportError) as error:  # an optional data set or package absent here
        pytest.skip(f"{group}: {type(error).__name__}: {str(error)[:120]}")
    packed_models = []
    pack = train_layout.pack

    def counting_pack(model):
        packed_models.append(model)
        return pack(model)

    monkeypatch.setattr(train_layout, "pack", counting_pack)
    masked = registered.run_single(config, layout="masked")
    assert not packed_models
    packed = registered.run_single(config, layout="packed")
    assert packed_models, f"{group}: no model of {config.variants} was trained packed"
    assert [(r["variant"], r["seed"]) for r in masked] == [(r["variant"], r["seed"]) for r in packed]
    for a, b in zip(masked, packed):
        assert a.keys() == b.keys()
        differ = {k: (a[k], b[k]) for k in a if not close(k, a[k], b[k])}
        assert not differ, f"{group} {a['variant']}: records differ with the layout: {differ}"


def test_stacks_train_masked_whatever_the_layout(monkeypatch):
    """Boolean runs stack (batched masked products): the option does not reach them, records are equal."""
    registered = experiment("boolean")
    configs = [registered.make_config(warmup_epochs=1, epochs_after=1, train_size=32, test_size=32, seed=s,
                                      variants="dense+random") for s in (0, 1)]
    monkeypatch.setattr(train_layout, "pack", lambda model: pytest.fail("a stacked model was packed"))
    packed, masked = registered.run(configs, layout="packed"), registered.run(configs, layout="masked")
    assert len(packed) == len(masked) == 4
    for a, b in zip(masked, packed):  # the same path twice: bitwise equal
        assert a.keys() == b.keys() and all(str(a[k]) == str(b[k]) for k in a)


def test_auto_is_the_default_and_unknown_layouts_are_refused(tmp_path):
    assert train_layout.check_train_layout(None) == "auto"
    with pytest.raises(InvalidParameterError, match=r"the 'layout' parameter of run_study must be .*packed"):
        api.run_study("boolean", "headline", seeds=1, out=tmp_path / "x", layout="dense", quiet=True)
    assert not (tmp_path / "x").exists()


class Reached(Exception):
    """Raised by the recorder once the layout has reached the protocol."""


def test_the_layout_given_reaches_the_protocol_and_travels_with_each_unit(monkeypatch, tmp_path):
    """From the CLI through api.run_study and the runner to the protocol (local backend, in this process);
    a pool worker or a Ray task gets it as one of run_unit's arguments, beside the device."""
    from torchfpe.lab.experiments import protocol
    from torchfpe.lab.sweep.runner import _unit_args, make_jobs
    from torchfpe.lab.sweep.unit import run_unit

    seen = []

    def recorder(layout, owner="layout"):
        seen.append(layout)
        raise Reached

    monkeypatch.setattr(protocol, "check_train_layout", recorder)
    with pytest.raises(Reached):
        api.run_study("boolean", "headline", seeds=1, out=tmp_path / "a", backend="local", quiet=True,
                      layout="packed", overrides={"warmup_epochs": 1, "epochs_after": 1})
    assert seen == ["packed"]
    jobs = make_jobs("boolean", [{"variants": "dense+random", "seed": 0}])
    unit = _unit_args(jobs, 1, "cpu", "masked")
    assert unit[3:5] == ("cpu", "masked")
    with pytest.raises(Reached):
        run_unit(*unit)
    assert seen == ["packed", "masked"]


def test_the_cli_takes_layout_and_refuses_an_unknown_one(tmp_path):
    from helpers import cli

    result = cli("reproduce", "boolean", "--layout", "dense", "--out", tmp_path / "b", "--quiet")
    assert result.exit_code == 2 and "the 'layout' parameter of run_study must be" in result.output
    assert not (tmp_path / "b").exists()
