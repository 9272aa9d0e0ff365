"""The door for outside code (torchfpe.lab.plugins): a split, a layout and an experiment written in a user's
module reach the CLI, the process pool's workers and Ray; what no worker can import is refused first.

The optimizer part of the door waits for the optimizer registry (core/optim.py): the plugin's import is
what registers, so it will travel like the others once optimizers are registered records.
"""

import json
import sys
import textwrap
from pathlib import Path

import pytest

from helpers import cli, one_error_line

PLUGIN = textwrap.dedent('''
    """A plugin: a split, a layout and an experiment from outside the package."""
    import dataclasses
    from dataclasses import dataclass

    import torch

    from torchfpe import expand, nonzero_parameters, pack, register_split
    from torchfpe.core.layouts import EllLinear, register_layout
    from torchfpe.lab.experiments.registry import register_experiment
    from torchfpe.lab.experiments.studies import Study


    def halves(weight, alpha, generator):
        inputs = weight.shape[1]
        return (torch.arange(inputs) * alpha) // inputs


    register_split("plugin_halves", halves, blocks=True, description="plugin: contiguous halves")


    @register_layout
    class PluginRows(EllLinear):
        layout = "plugin_rows"
        auto_order = None


    @dataclass(frozen=True)
    class PluginConfig:
        width: int = 6
        seed: int = 0

        def to_dict(self):
            return dataclasses.asdict(self)

        def without_seed(self):
            return tuple((k, v) for k, v in sorted(self.to_dict().items()) if k != "seed")


    def run_batch(configs):
        records = []
        for config in configs:
            torch.manual_seed(config.seed)
            parent = torch.nn.Sequential(torch.nn.Linear(8, config.width), torch.nn.ReLU(),
                                         torch.nn.Linear(config.width, 1))
            model = pack(expand(parent, 2, "plugin_halves", seed=config.seed), "plugin_rows")
            x = torch.randn(32, 8, generator=torch.Generator().manual_seed(config.seed))
            accuracy = float(((model(x) > 0).squeeze(1) == (x[:, 0] > 0)).float().mean())
            for variant in ("dense", "plugin_halves"):
                records.append({**config.to_dict(), "variant": variant, "test_accuracy": accuracy,
                                "train_accuracy": accuracy, "nonzero_parameters": nonzero_parameters(model),
                                "layer": type(model[0]).__name__})
        return records


    register_experiment("plugin_exp", PluginConfig, run_batch, studies=[
        Study("headline", "plugin_exp", "a plugin's experiment", default_seeds=2, group="plugin_group",
              meta={"layout": "headline"})])
''')
TINY = ["--seeds", "1", "--quiet", "--set", "warmup_epochs=4", "--set", "epochs_after=4", "--set", "train_size=64",
        "--set", "test_size=64"]


@pytest.fixture
def isolated(monkeypatch):
    """What a test's plugins register is forgotten after it (other tests list the registries)."""
    from torchfpe.core.layouts import LAYOUTS
    from torchfpe.core.splits import SPLITS
    from torchfpe.lab import plugins
    from torchfpe.lab.experiments import registry

    registry.experiments()
    saved = (dict(SPLITS), dict(LAYOUTS), dict(registry._EXPERIMENTS), dict(plugins._LOADED), list(sys.path),
             set(sys.modules))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    for name in set(SPLITS) - set(saved[0]):
        SPLITS.remove(name)
    for store, before in ((LAYOUTS, saved[1]), (registry._EXPERIMENTS, saved[2]), (plugins._LOADED, saved[3])):
        store.clear()
        store.update(before)
    sys.path[:] = saved[4]
    for name in set(sys.modules) - saved[5]:
        if name.startswith("user_plugin"):
            del sys.modules[name]


def _plugin(folder: Path, name: str = "user_plugin") -> Path:
    path = folder / f"{name}.py"
    path.write_text(PLUGIN)
    return path


def _records(out: Path) -> list[dict]:
    return [record for path in sorted((out / "runs").glob("*.json"))
            for record in json.loads(path.read_text())["records"]]


@pytest.mark.parametrize("backend", ["local", "process"])
def test_a_plugin_split_is_a_variant_of_a_builtin_study(isolated, tmp_path, backend):
    plugin = _plugin(tmp_path)
    out = tmp_path / "out"
    result = cli("--plugin", plugin, "reproduce", "boolean", "--out", out, "--backend", backend, "--workers", "1",
                 "--set", "variants=dense+plugin_halves", *TINY)
    assert result.exit_code == 0, result.output
    assert sorted(r["variant"] for r in _records(out)) == ["dense", "plugin_halves"]


@pytest.mark.parametrize("backend", ["local", "process"])
def test_a_plugin_experiment_with_its_own_layout_is_a_command(isolated, tmp_path, monkeypatch, backend):
    _plugin(tmp_path)
    monkeypatch.chdir(tmp_path)  # a module name is found in the current folder, as python -m finds it
    result = cli("--plugin", "user_plugin", "reproduce", "plugin_group", "--out", "out", "--backend", backend,
                 "--workers", "1", "--quiet")
    assert result.exit_code == 0, result.output
    records = _records(tmp_path / "out")
    assert len(records) == 4 and {r["layer"] for r in records} == {"PluginRows"}  # the layout, in the worker too


def test_a_plugin_that_is_missing_or_fails_is_one_line(isolated, tmp_path):
    assert "no module named 'no_such_plugin'" in one_error_line(cli("--plugin", "no_such_plugin", "report", tmp_path))
    assert "no such file" in one_error_line(cli("--plugin", tmp_path / "none.py", "report", tmp_path))
    broken = tmp_path / "user_plugin_broken.py"
    broken.write_text("1 / 0\n")
    result = cli("--plugin", broken, "report", tmp_path)
    assert result.exit_code == 1
    assert "plugin" in one_error_line(result) and "ZeroDivisionError" in result.output


def test_a_split_registered_in_a_function_is_refused_before_the_pool_starts(isolated, tmp_path):
    """The notebook case: the workers could not see it, so the run stops before anything is written."""
    import torch

    from torchfpe import register_split
    from torchfpe.core.validation import InvalidParameterError
    from torchfpe.lab import api

    def notebook_split(weight, alpha, generator):
        return torch.arange(weight.shape[1]) % alpha

    register_split("notebook_split", notebook_split)
    out = tmp_path / "out"
    with pytest.raises(InvalidParameterError, match="split 'notebook_split' is registered in this process only "
                                                    r"\(defined inside a function.*put it in a module and pass --plugin"):
        api.run_study("boolean", "headline", seeds=1, overrides={"variants": "dense+notebook_split"}, out=out,
                      backend="process", quiet=True)
    assert not out.exists()


OPTIMIZER_PLUGIN = """
import torch
from torchfpe.core.optim import register_optimizer

register_optimizer("plugin_rmsprop", torch.optim.RMSprop, settings=("lr", "weight_decay"), replace=True)
"""


@pytest.mark.parametrize("backend", ["local", "process"])
def test_an_optimizer_plugin_trains_a_study_from_the_cli(isolated, tmp_path, backend):
    from torchfpe.core.optim import OPTIMIZERS

    plugin = tmp_path / f"my_optimizer_{backend}.py"  # one module name per run (a name imports once)
    plugin.write_text(OPTIMIZER_PLUGIN)
    out = tmp_path / "out"
    try:
        result = cli("--plugin", plugin, "reproduce", "boolean", "--out", out, "--backend", backend, "--workers", "1",
                     "--set", "optimizer=plugin_rmsprop", "--set", "variants=dense+random", *TINY)
        assert result.exit_code == 0, result.output
        records = _records(out)
        assert sorted(r["variant"] for r in records) == ["dense", "random"]
        assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in records)
    finally:
        OPTIMIZERS.remove("plugin_rmsprop")


def test_an_optimizer_registered_in_a_function_is_refused_before_the_pool_starts(isolated, tmp_path):
    import torch

    from torchfpe.core.optim import OPTIMIZERS, register_optimizer
    from torchfpe.core.validation import InvalidParameterError
    from torchfpe.lab import api

    class NotebookSGD(torch.optim.SGD):
        pass

    register_optimizer("notebook_sgd", NotebookSGD, settings=("lr",))
    try:
        out = tmp_path / "out"
        with pytest.raises(InvalidParameterError, match="optimizer 'notebook_sgd' is registered in this process only"):
            api.run_study("boolean", "headline", seeds=1, overrides={"variants": "dense", "optimizer": "notebook_sgd"},
                          out=out, backend="process", quiet=True)
        assert not out.exists()
    finally:
        OPTIMIZERS.remove("notebook_sgd")


def test_the_plugins_travel_with_each_unit(isolated, tmp_path):
    from torchfpe.lab import plugins
    from torchfpe.lab.sweep.runner import Job, _unit_args, make_jobs

    (plugin,) = plugins.load([str(_plugin(tmp_path))])
    assert plugins.load([str(tmp_path / "user_plugin.py")]) == (plugin,)  # loading twice is a no-op
    jobs = make_jobs("boolean", [{"variants": "dense+plugin_halves", "seed": 0}])
    *_, carried = _unit_args(jobs, 1, "cpu")
    assert carried == (plugin,) and plugin.file == str(tmp_path / "user_plugin.py")
    assert isinstance(jobs[0], Job)


@pytest.mark.ray
def test_a_plugin_reaches_the_ray_guards_cluster(isolated, tmp_path):
    pytest.importorskip("ray")
    plugin = _plugin(tmp_path)
    out = tmp_path / "out"
    result = cli("--plugin", plugin, "reproduce", "boolean", "--out", out, "--backend", "ray",
                 "--set", "variants=dense+plugin_halves", *TINY)
    assert result.exit_code == 0, result.output
    assert sorted(r["variant"] for r in _records(out)) == ["dense", "plugin_halves"]
