"""``--device`` / ``device=``: checked before any work or write, no part of a run's key, the same records."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from torchfpe.lab import api
from torchfpe.lab.cli import app
from torchfpe.core.validation import InvalidParameterError
from torchfpe.lab.devices import resolve_device
from torchfpe.lab.experiments import boolean
from torchfpe.lab.experiments.registry import experiment
from torchfpe.lab.sweep import ResultStore

TINY = dict(n_vars=12, clauses=3, literals=2, neurons=3, train_size=64, test_size=64, warmup_epochs=3,
            epochs_after=3)
HAS_CUDA = torch.cuda.is_available()
HAS_MPS = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def test_device_names_are_checked_against_this_machine():
    assert resolve_device(None) == torch.device("cpu") and resolve_device("CPU") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    for bad in ("tpu", "gpu", "cuda:x", "", "cpu:1", 3):
        with pytest.raises(InvalidParameterError, match="'device' parameter of here"):
            resolve_device(bad, "here")
    if not HAS_CUDA:
        with pytest.raises(InvalidParameterError, match="no CUDA device"):
            resolve_device("cuda")
        with pytest.raises(InvalidParameterError, match="no CUDA device"):
            resolve_device("cuda:1")
    else:
        with pytest.raises(InvalidParameterError, match="CUDA device\\(s\\)"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")
    if not HAS_MPS:
        with pytest.raises(InvalidParameterError, match="MPS is not available"):
            resolve_device("mps")


@pytest.mark.parametrize("device", ["cuda", "mps", "tpu"])
def test_an_unusable_device_is_a_usage_error_before_anything_is_written(tmp_path, device):
    if (device == "cuda" and HAS_CUDA) or (device == "mps" and HAS_MPS):
        pytest.skip(f"{device} is present here")
    out = tmp_path / "run"
    result = CliRunner().invoke(app, ["reproduce", "boolean", "--seeds", "1", "--out", str(out), "--device", device,
                                      "--set", "train_size=64"])
    assert result.exit_code == 2, result.output
    assert "'device' parameter" in result.output and "Traceback" not in result.output
    assert not out.exists()
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("experiment: boolean\ngrid: {neurons: [3]}\nseeds: 1\n")
    result = CliRunner().invoke(app, ["sweep", str(sweep), "--out", str(out), "--device", device])
    assert result.exit_code == 2 and not out.exists(), result.output
    with pytest.raises(InvalidParameterError, match="'device' parameter of run_study"):
        api.run_study("boolean", "headline", seeds=1, out=out, device=device, quiet=True)
    assert not out.exists()


def test_the_device_changes_neither_keys_nor_records(tmp_path):
    """A folder filled with --device cpu holds the runs a run without it plans: nothing is run twice."""
    overrides = {name: value for name, value in TINY.items() if name != "neurons"}
    first = api.run_study("boolean", "headline", seeds=2, overrides=overrides, out=tmp_path / "a", backend="local",
                          quiet=True, device="cpu")
    store = ResultStore(tmp_path / "a")
    keys = sorted(store.keys())
    assert json.loads((tmp_path / "a" / "meta.json").read_text())["device"] == "cpu"
    again = api.run_study("boolean", "headline", seeds=2, overrides=overrides, out=tmp_path / "a", backend="local",
                          quiet=True)  # the default device: everything is already there
    assert again == first and sorted(store.keys()) == keys
    records = [r for run in store.all_runs() for r in run["records"]]
    assert records and all("device" not in record for record in records)


def test_run_batch_on_the_cpu_device_gives_the_default_records():
    configs = [boolean.EXPERIMENT.make_config(**TINY, variants="dense+random", seed=s) for s in (0, 1)]
    default = boolean.EXPERIMENT.run_batch(configs)
    on_cpu = boolean.EXPERIMENT.run(configs, "cpu")
    assert len(default) == len(on_cpu) == 4
    for a, b in zip(default, on_cpu):
        assert a.keys() == b.keys()
        for key, value in a.items():
            same = torch.equal(value, b[key]) if isinstance(value, torch.Tensor) else value == b[key]
            assert same or (value != value and b[key] != b[key]), key  # NaN == NaN here
    assert boolean.EXPERIMENT.device and not experiment("theory").device


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_records_on_cuda_mean_what_they_mean_on_the_cpu():
    configs = [boolean.EXPERIMENT.make_config(**TINY, variants="dense+random+clause", dtype="float64", seed=s)
               for s in range(3)]
    cpu = boolean.EXPERIMENT.run_batch(configs)
    cuda = boolean.EXPERIMENT.run_batch(configs, device="cuda")
    assert [(r["variant"], r["seed"], r["nonzero_parameters"]) for r in cpu] == \
        [(r["variant"], r["seed"], r["nonzero_parameters"]) for r in cuda]
    for a, b in zip(cpu, cuda):  # float64: the two devices' rounding stays far below one example
        assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 1 / 64 + 1e-9
    single = boolean.EXPERIMENT.run_single(configs[0], device="cuda")
    assert {r["variant"] for r in single} == {"dense", "random", "clause"}


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
def test_a_study_runs_on_cuda(tmp_path):
    report = api.run_study("heads", "width", seeds=1, overrides={"embeddings": "digits", "neurons": [4],
                                                                  "alpha": [2], "variants": "dense+random"},
                           out=tmp_path / "h", backend="local", quiet=True, device="cuda")
    assert report.exists()


def test_a_structured_budget_with_a_control_is_refused_before_anything_is_written(tmp_path):
    """budget='structured' cannot honour a split whose children are not a partition: refused at the config."""
    with pytest.raises(InvalidParameterError, match="budget='structured'.*variant 'overlap'"):
        boolean.EXPERIMENT.make_config(**TINY, budget="structured", variants="dense+random+overlap")
    boolean.EXPERIMENT.make_config(**TINY, budget="structured", variants="dense+random+clause")  # partitions: fine
    out = tmp_path / "heads"
    result = CliRunner().invoke(app, ["reproduce", "heads", "--study", "width", "--set", "budget=structured",
                                      "--set", "embeddings=digits", "--out", str(out)])
    assert result.exit_code == 2 and "budget='structured'" in result.output, result.output
    assert not out.exists()
