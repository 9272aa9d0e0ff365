"""The Boolean experiment end to end on tiny configs."""

import pytest
import torch

from torchfpe.lab.experiments.boolean import EXPERIMENT as BOOLEAN, TASK, init_model
from torchfpe.lab.experiments.protocol import task_variants
from torchfpe.lab.experiments.studies import groups, study_configs

VARIANTS = task_variants(TASK)
STUDIES = groups()["boolean"]

TINY = dict(warmup_epochs=20, epochs_after=20, train_size=128, test_size=128)


def test_every_variant_runs_at_the_parent_budget():
    records = BOOLEAN.run_batch([BOOLEAN.make_config(**TINY, variants="+".join(VARIANTS), seed=3)])
    assert [r["variant"] for r in records] == list(VARIANTS)
    budget = records[0]["nonzero_parameters"]
    assert budget == 48 * 8 + 8 + 8 + 1
    for record in records:
        assert record["nonzero_parameters"] == budget, record["variant"]
        assert 0.0 <= record["test_accuracy"] <= 1.0
        assert record["seed"] == 3
    widths = {r["variant"]: r["hidden_units"] for r in records}
    assert widths["dense"] == widths["dropconnect"] == 8
    assert widths["random"] == widths["clause"] == widths["static_sparse"] == 16
    dense = records[0]
    assert dense["relative_gain"] == 0.0 and dense["capacity_mean_fold"] == 1.0
    assert records[1]["relative_gain"] == pytest.approx(
        (records[1]["test_accuracy"] - dense["test_accuracy"]) / dense["test_accuracy"])


def test_variants_share_the_warm_up_and_the_data():
    a = BOOLEAN.run_batch([BOOLEAN.make_config(**TINY, variants="dense+random", seed=1)])
    b = BOOLEAN.run_batch([BOOLEAN.make_config(**TINY, variants="random", seed=1)])
    assert a[1]["test_accuracy"] == b[0]["test_accuracy"]
    assert a[1]["capacity_mean"] == pytest.approx(b[0]["capacity_mean"])


def test_seed_fixes_initial_weights_without_touching_global_rng():
    state = torch.random.get_rng_state()
    first = init_model(BOOLEAN.make_config(seed=4))
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(first[0].weight, init_model(BOOLEAN.make_config(seed=4))[0].weight)


@pytest.mark.parametrize("overrides, words", [
    ({"variants": "dense+bogus"}, "variants"),
    ({"neurons": 0}, "neurons"),
    ({"dtype": "float16"}, "dtype"),
    ({"optimizer": "lbfgs"}, "optimizer"),
    ({"clauses": 20}, "clauses"),  # 20 disjoint clauses of 3 literals do not fit in 48 variables
    ({"nonsense": 1}, "unknown"),
])
def test_bad_configs_raise(overrides, words):
    with pytest.raises(ValueError, match=words):
        BOOLEAN.make_config(**overrides)


def test_study_grid_and_overrides():
    configs = study_configs(STUDIES["neurons"], 2, {"clauses": 6, "neurons": [8, 16]})
    assert [(c["neurons"], c["seed"]) for c in configs] == [(8, 0), (8, 1), (16, 0), (16, 1)]
    assert all(c["clauses"] == 6 for c in configs)
    with pytest.raises(ValueError, match="seed"):
        study_configs(STUDIES["headline"], 2, {"seed": 3})
