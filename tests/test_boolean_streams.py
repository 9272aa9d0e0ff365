"""Separate random streams for the Boolean experiment's data, initial weights and split masks."""

import pytest
import torch

from torchfpe.lab.experiments import boolean, protocol
from torchfpe.lab.experiments.boolean import EXPERIMENT as BOOLEAN, TASK, init_model, stream_seed, streams_of

TINY = dict(warmup_epochs=2, epochs_after=2, train_size=64, test_size=64)


def _random_masks(config) -> torch.Tensor:
    data = TASK.data(config)
    expanded = protocol.build_variant(TASK, config, "random", init_model(config), data)
    return expanded[0].weight_mask.clone()


def test_stream_seeds_are_distinct_stable_and_in_range():
    seeds = {stream_seed(s, p) for s in range(20) for p in ("data", "init", "split")}
    assert len(seeds) == 60 and all(0 <= s < 2**63 for s in seeds)
    assert stream_seed(7, "init") == stream_seed(7, "init")
    with pytest.raises(ValueError, match="purpose"):
        stream_seed(7, "weights")


def test_split_masks_do_not_change_when_only_the_init_stream_changes(monkeypatch):
    config = BOOLEAN.make_config(**TINY, seed=5)
    before, weight = _random_masks(config), init_model(config)[0].weight.detach().clone()
    real = boolean.stream_seed
    monkeypatch.setattr(boolean, "stream_seed", lambda seed, purpose: real(seed + 1000 * (purpose == "init"), purpose))
    assert not torch.equal(init_model(config)[0].weight, weight)  # the init stream did change
    after = _random_masks(config)
    # the same partition of each parent's inputs among its two children; the budget's pruning of the few
    # smallest weights (which depends on the weights) aside: no input reaches both children in either draw
    union = before | after
    assert not (union[0::2] & union[1::2]).any()
    # what differs is at most the pruned weights of each draw: the copies of the outgoing weights and of the
    # biases add 2 * (alpha - 1) * neurons = 16 non-zeros, pruned back wherever the smallest weights are
    assert int((before != after).sum()) <= 2 * 16


def test_shared_streams_tie_the_random_split_to_the_initial_weights():
    """Why the streams were separated: with one seed for both, the random split dealt each parent's inputs in
    the rank order of its initial weights; with separate streams the order is unrelated."""
    def split_follows_init(streams: str) -> bool:
        config = BOOLEAN.make_config(**TINY, seed=3, streams=streams)
        weight = init_model(config)[0].weight.detach()
        draws = torch.rand(weight.shape, generator=torch.Generator().manual_seed(TASK.split_seed(config)))
        return torch.equal(torch.argsort(draws, dim=1), torch.argsort(weight, dim=1))

    assert split_follows_init("shared")
    assert not split_follows_init("separate")


def test_data_are_the_same_in_both_modes_and_weights_are_not():
    shared, separate = (BOOLEAN.make_config(**TINY, seed=2, streams=s) for s in ("shared", "separate"))
    a, b = TASK.data(shared), TASK.data(separate)
    assert torch.equal(a.x_train, b.x_train) and a.info == b.info
    assert not torch.equal(init_model(shared)[0].weight, init_model(separate)[0].weight)


def test_streams_is_part_of_the_run_key_and_old_configs_read_as_shared():
    config = BOOLEAN.make_config(**TINY)
    assert config.streams == "separate" and config.to_dict()["streams"] == "separate"
    old = {k: v for k, v in config.to_dict().items() if k != "streams"}
    assert streams_of(old) == "shared" and streams_of(config.to_dict()) == "separate"
    with pytest.raises(ValueError, match="streams"):
        BOOLEAN.make_config(streams="one")
