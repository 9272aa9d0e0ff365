"""Every registered split, by its declared traits; a split registered from outside the package."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import torchfpe
from torchfpe import SPLITS, expand, nonzero_parameters, pack, register_split
from torchfpe.core import BlockLinear, InvalidParameterError, expanded_layers
from torchfpe.lab.experiments import protocol
from torchfpe.lab.experiments.boolean import TASK as BOOLEAN_TASK
from torchfpe.lab.experiments.cnn import TASK as CNN_TASK
from torchfpe.lab.experiments.heads import TASK as HEADS_TASK


def mlp(sizes, seed=0):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b, dtype=torch.float64)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    return nn.Sequential(*layers)


def needs_for(name: str, inputs: int) -> dict:
    """What a split needs, for a first layer of ``inputs`` inputs."""
    kwargs = {}
    if "clauses" in SPLITS[name].needs:
        kwargs["clauses"] = [list(range(i, min(i + 3, inputs))) for i in range(0, inputs, 3)]
    if "data" in SPLITS[name].needs:
        kwargs["data"] = torch.randn(64, inputs, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return kwargs


@pytest.mark.parametrize("name", list(SPLITS))
def test_every_split_keeps_the_parents_count_and_its_masks_through_training(name):
    parent = mlp([12, 8, 3])
    model = expand(parent, 2, name, seed=0, **needs_for(name, 12))
    assert nonzero_parameters(model) == nonzero_parameters(parent)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model.train()
        model(torch.randn(16, 12, dtype=torch.float64)).square().sum().backward()
        optimizer.step()
    for _, layer in expanded_layers(model):
        assert layer.masked_out_nonzero() == 0
    split = SPLITS[name]
    width = model[0].out_features
    assert width == (16 if split.widens else 8)


@pytest.mark.parametrize("name", SPLITS.where(partition=True))
def test_partition_splits_are_disjoint_and_covering(name):
    parent = mlp([12, 8, 3])
    masks = expand(parent, 3, name, seed=0, budget="none", **needs_for(name, 12))[0].weight_mask.reshape(8, 3, 12)
    assert torch.equal(masks.sum(dim=1), torch.ones(8, 12, dtype=torch.long)), name


@pytest.mark.parametrize("name", SPLITS.where(partition=True))
def test_the_blocks_trait_says_how_auto_packs_the_split(name):
    parent = mlp([32, 64, 3])  # 64 parents: room for groups of MIN_GROUP_ROWS parents in blocks
    model = expand(parent, 2, name, seed=0, budget="outgoing", **needs_for(name, 32))
    packed = pack(model)
    assert isinstance(packed[0], BlockLinear) == SPLITS[name].blocks, name
    x = torch.randn(5, 32, dtype=torch.float64)
    assert torch.allclose(model(x), packed(x), atol=1e-10)


def test_variants_follow_what_a_task_provides():
    assert "clause" in protocol.task_variants(BOOLEAN_TASK)
    assert "clause" not in protocol.task_variants(HEADS_TASK) and "correlation" in protocol.task_variants(HEADS_TASK)
    assert "correlation" not in protocol.task_variants(CNN_TASK) and "random" in protocol.task_variants(CNN_TASK)
    assert "wide" in protocol.task_variants(HEADS_TASK) and "wide" not in protocol.task_variants(BOOLEAN_TASK)
    for name, split in SPLITS.items():
        assert protocol.phase(name) == (2 if split.at_init else 1)


# ---------------------------------------------------------------------------- a split from outside
def halves(weight, alpha, generator):
    """Child ids: inputs dealt to children in reverse index order (the same for every parent)."""
    inputs = weight.shape[1]
    return (alpha - 1) - (torch.arange(inputs) * alpha) // inputs


@pytest.fixture
def external_split():
    split = register_split("reversed_test", halves, blocks=True, description="test: reversed chunks")
    yield split
    SPLITS.remove("reversed_test")


def test_a_split_registered_from_outside_works_in_expand_and_pack(external_split):
    parent = mlp([16, 32, 3])
    model = expand(parent, 2, "reversed_test", seed=0)
    assert nonzero_parameters(model) == nonzero_parameters(parent)
    masks = expand(parent, 2, "reversed_test", seed=0, budget="none")[0].weight_mask.reshape(32, 2, 16)
    assert masks[:, 1, :8].all() and not masks[:, 0, :8].any()  # child 1 holds the first half
    packed = pack(model)
    assert isinstance(packed[0], BlockLinear)
    x = torch.randn(4, 16, dtype=torch.float64)
    assert torch.allclose(model(x), packed(x), atol=1e-10)


def test_a_split_registered_from_outside_is_a_study_variant(external_split, tmp_path):
    from torchfpe.lab import api

    tiny = {"warmup_epochs": 5, "epochs_after": 5, "train_size": 64, "test_size": 64,
            "variants": "dense+random+reversed_test"}
    report = api.run_study("boolean", "headline", seeds=2, overrides=tiny, out=tmp_path / "o", backend="local",
                           quiet=True)
    text = report.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| reversed_test |"))
    assert "| 2 |" in row  # two seeds
    records = (tmp_path / "o" / "records.csv").read_text().splitlines()
    assert sum(",reversed_test," in line for line in records) == 2


def test_registering_checks_its_arguments(external_split):
    with pytest.raises(InvalidParameterError, match="already registered"):
        register_split("reversed_test", halves)
    register_split("reversed_test", halves, replace=True)  # replacing is explicit
    for name in ("dense", "wide2", "two words", 3):
        with pytest.raises(InvalidParameterError, match="'name' parameter of register_split"):
            register_split(name, halves)
    with pytest.raises(InvalidParameterError, match="'needs' parameter"):
        register_split("needy_test", halves, needs=("labels",))
    with pytest.raises(InvalidParameterError, match="'fn' parameter"):
        register_split("broken_test", "random")
    assert "needy_test" not in SPLITS and "broken_test" not in SPLITS


@pytest.mark.parametrize("result, words", [
    ("random", "returned str"), (None, "returned NoneType"), (torch.zeros(3, 12), "integer tensor"),
    (torch.zeros(5, dtype=torch.long), "shape"), (torch.full((8, 12), 2), r"lie in \[0, 2\)"),
])
def test_a_split_that_breaks_the_contract_is_refused_naming_the_layer(result, words):
    parent = mlp([12, 8, 3])
    with pytest.raises(InvalidParameterError, match=words) as error:
        expand(parent, 2, lambda weight, alpha, generator: result, seed=0)
    assert "layer '0'" in str(error.value)


def test_unknown_split_lists_the_registered_ones():
    with pytest.raises(InvalidParameterError, match="registered splits: random, clause"):
        expand(mlp([12, 8, 3]), 2, "nope")


def test_ignored_arguments_are_refused():
    parent = mlp([12, 8, 3])
    with pytest.raises(InvalidParameterError, match="'clauses' parameter of expand is only read"):
        expand(parent, 2, "random", clauses=[[0, 1]])
    with pytest.raises(InvalidParameterError, match="'dropconnect_p' parameter of expand is only read"):
        expand(parent, 2, "random", dropconnect_p=0.3)
    with pytest.raises(InvalidParameterError, match="'data' parameter of expand is only read"):
        expand(parent, 2, "random", data=torch.randn(10, 12))
    with pytest.raises(InvalidParameterError, match="needs data"):
        expand(parent, 2, "correlation")
    with pytest.raises(InvalidParameterError, match="data has 5 input features"):
        expand(parent, 2, "correlation", data=torch.randn(10, 5))
    expand(parent, 2, "dropconnect", dropconnect_p=0.3)  # read where it applies


# ---------------------------------------------------------------------------- budget="structured"
@pytest.mark.filterwarnings("ignore:expand ends")  # bias="zero": the children carry no bias, below the parent
@pytest.mark.parametrize("sizes", [(12, 8, 3), (12, 8, 6, 3), (16, 8, 8, 8, 4)])
@pytest.mark.parametrize("split", ["random", "grouped", "contiguous"])
def test_structured_budget_keeps_every_layer_at_its_parents_weight_count(sizes, split):
    parent = mlp(list(sizes))
    model = expand(parent, 2, split, seed=0, budget="structured", bias="zero")  # no bias copies to prune
    for (name, layer), parent_layer in zip(expanded_layers(model), [m for m in parent if isinstance(m, nn.Linear)]):
        out, inputs = parent_layer.out_features, parent_layer.in_features
        rows = layer.weight_mask.reshape(out, -1, layer.in_features)  # (parent unit, child, inputs)
        copies = layer.in_features // inputs
        per_pair = rows.reshape(out, rows.shape[1], inputs, copies).sum(dim=(1, 3))  # (parent unit, parent input)
        assert torch.equal(per_pair, torch.ones(out, inputs, dtype=torch.long)), name  # one weight per parent weight
        assert int(torch.count_nonzero(layer.weight)) == parent_layer.weight.numel(), name


def test_structured_budget_prunes_copied_biases_within_their_layer():
    parent = mlp([12, 8, 3])
    model, report = expand(parent, 2, "random", seed=0, budget="structured", return_report=True)
    assert nonzero_parameters(model) == nonzero_parameters(parent)
    assert [c.nonzero_after for c in report.layers] == [c.nonzero_before for c in report.layers]


@pytest.mark.parametrize("split", ["overlap", "static_sparse", "dropconnect"])
def test_structured_budget_refuses_splits_that_are_not_partitions(split):
    with pytest.raises(InvalidParameterError, match="budget='structured'"):
        expand(mlp([12, 8, 3]), 2, split, seed=0, budget="structured")


def test_structured_expansion_copies_are_disjoint_shares_of_the_outgoing_column():
    parent = mlp([12, 8, 6])
    model = expand(parent, 2, "random", seed=0, budget="structured")
    mask = model[2].weight_mask  # (6 outputs, 16 children)
    by_parent = mask.reshape(6, 8, 2)  # (output, parent, child)
    assert torch.equal(by_parent.sum(dim=2), torch.ones(6, 8, dtype=torch.long))  # each output reads one copy
    assert copy.deepcopy(model)(torch.randn(2, 12, dtype=torch.float64)).shape == (2, 6)
    assert torchfpe.BUDGETS[-1] == "none"
