"""Issue 19's unclear errors, each one line naming the argument or file, before anything is trained or written."""

import pytest
import torch
from torch import nn

from helpers import cli, mlp, one_error_line
from torchfpe import SPLITS, expand, register_split
from torchfpe.core.targets import find_ffn_pairs
from torchfpe.core.validation import InvalidParameterError

TINY = ["--seeds", "1", "--quiet", "--backend", "local", "--set", "warmup_epochs=2", "--set", "epochs_after=2",
        "--set", "train_size=32", "--set", "test_size=32"]
ALLOCATOR = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
             "allocate 8000000000000 bytes. Error code 12 (Cannot allocate memory)")


def test_running_out_of_memory_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch):
    from torchfpe.lab.sweep import runner

    def allocate(*args, **kwargs):
        raise RuntimeError(ALLOCATOR)

    monkeypatch.setattr(runner, "run_unit", allocate)
    out = tmp_path / "new"
    line = one_error_line(cli("reproduce", "boolean", "--out", out, *TINY))
    assert "out of memory while training (DefaultCPUAllocator" in line and "lower batch_size" in line
    assert "enforce fail" not in line and not out.exists()
    kept = tmp_path / "kept"  # a folder the user made stays, empty, as it was
    kept.mkdir()
    one_error_line(cli("reproduce", "boolean", "--out", kept, *TINY))
    assert kept.is_dir() and not any(kept.iterdir())


@pytest.mark.slow
def test_an_lm_batch_too_big_for_memory_is_one_line_and_leaves_no_folder(tmp_path):
    pytest.importorskip("transformers")
    out = tmp_path / "lm"
    result = cli("reproduce", "lm", "--set", "batch_size=1000000000000", "--set", "warmup_steps=1", "--set",
                 "steps_after=1", "--seeds", "1", "--out", out, "--backend", "local", "--quiet")
    assert "out of memory while training" in one_error_line(result) and not out.exists()


def test_a_random_bytes_npz_is_not_a_valid_npz_file(tmp_path):
    from torchfpe.data import load_embeddings
    from torchfpe.data.embeddings import EmbeddingFileError

    path = tmp_path / "random.npz"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(EmbeddingFileError) as caught:
        load_embeddings(path)
    message = str(caught.value)
    assert f"{path}: not a valid .npz file" in message
    assert "pickle" not in message and "unsafe" not in message


def test_a_split_with_the_wrong_signature_is_refused_when_registered():
    def two_arguments(weight, alpha):
        return torch.zeros(weight.shape[1], dtype=torch.long)

    def no_clauses(weight, alpha, generator):
        return torch.zeros(weight.shape[1], dtype=torch.long)

    with pytest.raises(InvalidParameterError, match=r"'fn' parameter of register_split must be callable as "
                                                    r"fn\(weight, alpha, generator\); got two_arguments\(weight, alpha\)"):
        register_split("wrong_signature_test", two_arguments)
    with pytest.raises(InvalidParameterError, match=r"fn\(weight, alpha, generator, clauses=\.\.\.\)"):
        register_split("wrong_signature_test", no_clauses, needs=("clauses",))
    assert "wrong_signature_test" not in SPLITS


@pytest.mark.parametrize("patterns", ["c_fc", None, 5, [], [("fc1", "fc2")], [(["fc1"],)], [(["fc1"], 3)],
                                      [([], "fc2")], [([""], "fc2")]])
def test_find_ffn_pairs_checks_its_patterns(patterns):
    with pytest.raises(InvalidParameterError, match="the 'patterns' parameter of find_ffn_pairs must be a non-empty "
                                                    "list of"):
        find_ffn_pairs(nn.Sequential(nn.Linear(3, 4)), patterns=patterns)


def test_find_ffn_pairs_still_takes_patterns_of_names():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.up, self.down = nn.Linear(4, 8), nn.Linear(8, 4)

    assert find_ffn_pairs(Block(), patterns=[(["up"], "down")]) == [("up", "down")]


def test_data_that_is_a_device_is_not_said_to_be_missing():
    from torchfpe.data.text import TextError, read_text

    with pytest.raises(TextError, match="/dev/null: not a regular file or a folder"):
        read_text("/dev/null")


def test_run_study_checks_out_before_anything(tmp_path):
    from torchfpe.lab import api

    with pytest.raises(InvalidParameterError, match="the 'out' parameter of run_study must be"):
        api.run_study("boolean", "headline", seeds=1, out=123, backend="local", quiet=True)
    with pytest.raises(InvalidParameterError, match="the 'out' parameter of run_sweep_file must be"):
        api.run_sweep_file(tmp_path / "none.yaml", out=123)


def test_splits_where_refuses_a_name_that_is_no_trait():
    with pytest.raises(InvalidParameterError, match="the 'bogus' parameter of SPLITS.where must be a split trait"):
        SPLITS.where(bogus=1)
    assert "overlap" in SPLITS.where(control=True, widens=True)


@pytest.mark.parametrize("seed", [None, 0])
@pytest.mark.parametrize("split", ["random", "static_sparse", "dropconnect"])
def test_expand_leaves_the_global_random_stream_alone(seed, split):
    model = mlp([6, 4, 2])
    state = torch.random.get_rng_state()
    expand(model, 2, split, seed=seed)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_expand_without_a_seed_draws_a_fresh_one_and_reports_it():
    model = mlp([6, 4, 2])
    _, first = expand(model, 2, seed=None, return_report=True)
    _, second = expand(model, 2, seed=None, return_report=True)
    assert first.seed != second.seed
    again = expand(model, 2, seed=first.seed)
    assert torch.equal(again[0].weight_mask, expand(model, 2, seed=first.seed)[0].weight_mask)
