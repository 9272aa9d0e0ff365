"""The two clause assignments: per-parent shuffled (``clause``) and one shared map (``clause_shared``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from torchfpe.core import expand
from torchfpe.core.splits import SPLITS, deal_clauses

CLAUSES = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11], [12, 13, 14], [15, 16, 17]]
INPUTS = 24  # 18 clause inputs + 6 distractors


def masks(split: str, alpha: int, parents: int = 8, seed: int = 0, clauses=CLAUSES) -> torch.Tensor:
    return SPLITS[split].child_masks("0", torch.ones(parents, INPUTS), alpha, torch.Generator().manual_seed(seed),
                                     clauses=clauses)


@pytest.mark.parametrize("split", ["clause", "clause_shared"])
@pytest.mark.parametrize("alpha", [2, 3, 4])
def test_disjoint_covering_and_clause_aligned(split, alpha):
    m = masks(split, alpha)
    assert m.shape == (8, alpha, INPUTS)
    assert torch.equal(m.sum(dim=1), torch.ones(8, INPUTS, dtype=torch.long))  # disjoint and covering
    for clause in CLAUSES:  # every clause lies wholly in one child of every parent
        held = m[:, :, clause].all(dim=2)
        assert torch.equal(held.sum(dim=1), torch.ones(8, dtype=torch.long))
    sizes = m.sum(dim=2)  # balanced: 24 inputs, whole 3-input clauses first, then single distractors
    assert int(sizes.max() - sizes.min()) <= 1


def test_shared_map_is_the_same_for_every_parent():
    m = masks("clause_shared", 2)
    assert all(torch.equal(m[0], m[i]) for i in range(8))


def test_per_parent_map_differs_between_parents():
    m = masks("clause", 2)
    assert any(not torch.equal(m[0], m[i]) for i in range(1, 8))


def test_shared_map_is_seeded():
    assert torch.equal(masks("clause_shared", 3, seed=5), masks("clause_shared", 3, seed=5))
    assert any(not torch.equal(masks("clause_shared", 3, seed=s)[0], masks("clause_shared", 3, seed=0)[0])
               for s in range(1, 6))


def test_deal_clauses_by_hand():
    # order: clause 1 (3 inputs) -> child 0, clause 0 (2 inputs) -> child 1, then distractors 5, 6 -> child 1, 0
    assert deal_clauses([[0, 1], [2, 3, 4]], 7, 2, [1, 0]) == [1, 1, 0, 0, 0, 1, 0]
    # a shared input goes with the first clause dealt
    assert deal_clauses([[0, 1], [1, 2]], 3, 2, [0, 1]) == [0, 0, 1]


def test_clause_shared_needs_clauses():
    with pytest.raises(ValueError, match="clause_shared"):
        masks("clause_shared", 2, clauses=None)
    parent = nn.Sequential(nn.Linear(6, 3), nn.ReLU(), nn.Linear(3, 1))
    with pytest.raises(ValueError, match="clauses"):
        expand(parent, 2, "clause_shared", seed=0)


def test_expand_with_clause_shared_gives_the_same_child_pattern_for_every_parent():
    torch.manual_seed(0)
    parent = nn.Sequential(nn.Linear(12, 4), nn.ReLU(), nn.Linear(4, 1))
    clauses = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9, 10, 11]]
    model = expand(parent, 2, "clause_shared", clauses=clauses, seed=1, budget="none")
    m = model[0].weight_mask.reshape(4, 2, 12).bool()
    assert all(torch.equal(m[0], m[i]) for i in range(4))
    assert torch.equal(m.sum(dim=1), torch.ones(4, 12, dtype=torch.long))
    assert sorted(int(m[0, k].sum()) for k in range(2)) == [6, 6]


def test_boolean_variant_clause_shared_runs():
    from torchfpe.lab.experiments.boolean import EXPERIMENT as BOOLEAN

    records = BOOLEAN.run_batch([BOOLEAN.make_config(n_vars=12, clauses=3, literals=2, neurons=3, train_size=64,
                                                     test_size=64, warmup_epochs=2, epochs_after=2,
                                                     variants="dense+clause+clause_shared")])
    shared = next(r for r in records if r["variant"] == "clause_shared")
    assert shared["hidden_units"] == 6 and shared["nonzero_parameters"] == records[0]["nonzero_parameters"]
