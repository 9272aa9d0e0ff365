"""Defects 1, 2, 6, 7, 8 and 10 of issue 9: the command line, the store and the process pool."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from torchfpe.lab import api
from torchfpe.lab.cli import app
from torchfpe.lab.sweep import ResultStore, StoreError

TINY = ["--set", "warmup_epochs=5", "--set", "epochs_after=5", "--set", "train_size=64", "--set", "test_size=64"]
TINY_OVERRIDES = {"warmup_epochs": 5, "epochs_after": 5, "train_size": 64, "test_size": 64}


def cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, code, words):
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], result.output


@pytest.fixture(scope="module")
def finished_store(tmp_path_factory):
    """A small finished headline store (2 seeds), copied by the tests that damage it."""
    out = tmp_path_factory.mktemp("store") / "headline"
    api.run_study("boolean", "headline", seeds=2, overrides=TINY_OVERRIDES, out=out, backend="local", quiet=True)
    return out


def copy_of(store: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(store, target)
    return target


# ------------------------------------------------------------------------- defect 6: late validation
@pytest.mark.parametrize("setting, words", [
    ("alpha=1", "'alpha' parameter of BooleanConfig must be an int >= 2"),
    ("alpha=49", "n_vars=48"),
    ("bias=half", "'bias' parameter"),
    ("budget=most", "'budget' parameter"),
    ("dropconnect_p=1.5", "'dropconnect_p' parameter"),
    ("lr=inf", "'lr' parameter of BooleanConfig must be a finite float > 0"),
    ("lr=abc", "'lr' must be a float; got 'abc'"),
])
def test_whole_config_is_checked_before_any_training_or_writing(tmp_path, setting, words):
    out = tmp_path / "out"
    started = time.perf_counter()
    result = cli("reproduce", "boolean", "--out", out, "--quiet", "--backend", "local", "--set", setting)
    assert_one_line_error(result, 2, words)
    assert not out.exists(), "nothing may be written for an invalid config"
    assert time.perf_counter() - started < 20, "the error must come before the dense warm-up"


# ---------------------------------------------------------------------------- defect 7: tracebacks
def test_out_that_is_a_file_or_cannot_be_created(tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert_one_line_error(cli("reproduce", "boolean", "--out", a_file, *TINY), 2, "is a file")
    assert_one_line_error(cli("reproduce", "boolean", "--out", a_file / "sub", *TINY), 2, "cannot be created")


@pytest.mark.parametrize("setting, words", [
    ("alpha=2.5", "'alpha' must be an int; got '2.5'"),
    ("neurons=[]", "gives no value"),
    ("alpha=[2,4]", "sweeps nothing"),
    ("seed=3", "--seeds"),
])
def test_bad_set_values_are_one_line_usage_errors(tmp_path, setting, words):
    result = cli("reproduce", "boolean", "--out", tmp_path / "o", "--set", setting)
    assert_one_line_error(result, 2, words)


@pytest.mark.parametrize("content, words", [
    (b"experiment: boolean\ngrid: {neurons: [4]}\nseeds: 2.5\n", "'seeds' must be an int >= 1"),
    (b"experiment: boolean\ngrid: {neurons: [4]}\nname: caf\xe9\n", "not UTF-8"),
    (b"", "is empty"),                                                      # defect 8
    (b"study: nope\ngrid: {neurons: [4]}\n", "unknown study 'nope'"),       # defect 8
    (b"grid: {neurons: []}\n", "grid axis 'neurons' has no values"),        # defect 8
    (b"experiment: vision\n", "unknown experiment 'vision'"),
    (b"grid: {colour: [1]}\n", "no field 'colour'"),
    (b"- just\n- a list\n", "must hold a mapping"),
])
def test_bad_sweep_files_are_one_line_usage_errors(tmp_path, content, words):
    spec = tmp_path / "sweep.yaml"
    spec.write_bytes(content)
    result = cli("sweep", spec, "--out", tmp_path / "o", "--backend", "local")
    assert_one_line_error(result, 2, words)
    assert not (tmp_path / "o").exists()


def test_odd_store_contents_are_one_line_runtime_errors(finished_store, tmp_path):
    out = copy_of(finished_store, tmp_path)
    runs = sorted((out / "runs").iterdir())
    # a directory named like a run file
    (out / "runs" / ("0" * 24 + ".run.json")).mkdir()
    assert_one_line_error(cli("report", out), 1, "is a directory")
    (out / "runs" / ("0" * 24 + ".run.json")).rmdir()
    # a run file without records
    payload = json.loads(runs[0].read_text())
    runs[0].write_text(json.dumps({**payload, "records": []}))
    assert_one_line_error(cli("report", out), 1, "holds no records")
    runs[0].write_text(json.dumps(payload))
    # a meta.json naming a study no report knows
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "study": "vision", "page": None}))  # page: issue 7
    assert_one_line_error(cli("report", out), 1, "unknown study 'vision'")


def test_debug_shows_the_traceback(tmp_path):
    result = CliRunner().invoke(app, ["reproduce", "boolean", "--out", str(tmp_path), "--set", "alpha=1", "--debug"])
    assert result.exit_code != 0 and type(result.exception).__name__ == "InvalidParameterError"


# --------------------------------------------------------------------- defect 2: incomplete reports
def test_report_of_a_store_with_missing_runs_says_what_is_missing(finished_store, tmp_path):
    out = copy_of(finished_store, tmp_path)
    meta = json.loads((out / "meta.json").read_text())
    missing_key = next(k for k, v in meta["planned"].items() if v["seed"] == 1)
    (out / "runs" / f"{missing_key}.run.json").unlink()
    result = cli("report", out)
    assert_one_line_error(result, 1, "1 of 2 planned runs are missing: seed=1")
    report = (out / "report.md").read_text()
    assert "**INCOMPLETE REPORT:** 1 of 2 planned runs are missing: seed=1" in report.splitlines()[2]
    assert api.build_report(out).name == "report.md"  # non-strict: written, no error


def test_a_record_with_a_non_numeric_accuracy_is_an_error_naming_the_file(finished_store, tmp_path):
    out = copy_of(finished_store, tmp_path)
    path = sorted((out / "runs").iterdir())[0]
    payload = json.loads(path.read_text())
    payload["records"][0]["test_accuracy"] = "high"
    path.write_text(json.dumps(payload))
    assert_one_line_error(cli("report", out), 1, f"{path}: record field 'test_accuracy' must be a number")
    with pytest.raises(StoreError, match=path.name):
        api.build_report(out)


def test_accuracy_intervals_are_clipped_to_0_100():
    from torchfpe.lab.report.stats import summarize, summarize_accuracy

    values = [1.0, 1.0, 0.96]
    assert summarize(values).ci_high > 1.0  # the raw t-interval leaves [0, 1]
    clipped = summarize_accuracy(values)
    assert clipped.ci_high == 1.0 and clipped.ci_low == summarize(values).ci_low
    assert summarize_accuracy([0.0, 0.0, 0.05]).ci_low == 0.0


# ------------------------------------------------------------------------ defect 10: one writer
def test_a_second_writer_is_refused_with_a_clear_message(finished_store, tmp_path):
    out = copy_of(finished_store, tmp_path)
    before = sorted(p.name for p in (out / "runs").iterdir())
    with ResultStore(out).lock():
        result = cli("reproduce", "boolean", "--seeds", "3", "--out", out, "--backend", "local", "--quiet", *TINY)
        assert_one_line_error(result, 1, "another torchfpe run")
    assert sorted(p.name for p in (out / "runs").iterdir()) == before, "the refused run must not write"
    # once the first writer is gone, the run goes ahead
    result = cli("reproduce", "boolean", "--seeds", "3", "--out", out, "--backend", "local", "--quiet", *TINY)
    assert result.exit_code == 0, result.output


# --------------------------------------------------------------------- defect 1: orphaned workers
POOL_SCRIPT = textwrap.dedent("""
    import sys
    from torchfpe.lab.sweep import ResultStore, execute, make_jobs
    configs = [dict(warmup_epochs=10**6, epochs_after=1, train_size=64, test_size=64, variants="dense", seed=s)
               for s in range(2)]
    execute(make_jobs("boolean", configs), ResultStore(sys.argv[1]), backend="process", workers=2, quiet=True)
""")


def _spawned_workers(parent: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"spawn_main" in cmdline:
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM])
def test_pool_workers_exit_when_the_parent_dies(tmp_path, how):
    script = tmp_path / "pool.py"
    script.write_text(POOL_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path / "store")], env=env)
    try:
        deadline = time.time() + 120
        workers = []
        while time.time() < deadline and len(workers) < 2:
            time.sleep(0.2)
            workers = _spawned_workers(parent.pid)
        assert len(workers) == 2, "the pool should have started two workers"
        time.sleep(1.0)  # let the workers reach their initializer and start training
        parent.send_signal(how)
        code = parent.wait(timeout=30)
        if how == signal.SIGTERM:
            assert code != 0
        deadline = time.time() + 20
        while time.time() < deadline and any(_alive(pid) for pid in workers):
            time.sleep(0.2)
        assert not any(_alive(pid) for pid in workers), "pool workers outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in _spawned_workers(parent.pid):
            os.kill(pid, signal.SIGKILL)


def test_console_script_names_the_extra_when_the_cli_packages_are_missing():
    code = "import sys; sys.modules['typer'] = None; from torchfpe._console import main; main()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "pip install 'torchfpe[experiments]'" in result.stderr


def test_embed_without_the_extraction_function_says_so(tmp_path, monkeypatch):
    import torchfpe.data

    monkeypatch.setitem(sys.modules, "torchfpe.data.extract", None)
    result = cli("embed", "cifar100", "--model", "clip", "--out", tmp_path / "e.npz")
    assert_one_line_error(result, 1, "extract_embeddings")
    assert_one_line_error(cli("embed", "x", "--model", "m", "--out", tmp_path / "e.txt"), 2, ".npz")
    assert torchfpe.data is not None


def test_seed_counts_and_values_beyond_their_range_are_refused(tmp_path):
    result = cli("reproduce", "boolean", "--seeds", str(2**64), "--out", tmp_path / "o")
    assert result.exit_code == 2 and "Traceback" not in result.output
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"grid: {{neurons: [4]}}\nseeds: [{2**64}]\n")
    assert_one_line_error(cli("sweep", spec, "--out", tmp_path / "o"), 2, "'seed' parameter of BooleanConfig")
    assert not (tmp_path / "o").exists()


def test_an_experiments_check_config_runs_before_anything_is_written(tmp_path, monkeypatch):
    import torchfpe.lab.experiments.boolean as boolean

    def check_config(config):
        raise ValueError(f"data for clauses={config.clauses} not found")

    monkeypatch.setattr(boolean.TASK, "check", check_config)
    out = tmp_path / "o"
    assert_one_line_error(cli("reproduce", "boolean", "--out", out, *TINY), 2, "data for clauses=8 not found")
    assert not out.exists()


# ------------------------------------------------------------- issue 13 B8: numpy integers as seeds and values
def test_numpy_seeds_and_overrides_give_the_same_runs(finished_store, tmp_path, capsys):
    np = pytest.importorskip("numpy")
    out = copy_of(finished_store, tmp_path)
    overrides = {name: np.int64(value) for name, value in TINY_OVERRIDES.items()}
    api.run_study("boolean", "headline", seeds=np.int64(2), overrides=overrides, out=out, backend="local")
    assert "0 runs done, 2 already in" in capsys.readouterr().out  # the same keys as the int run
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seeds"] == 2 and meta["overrides"] == TINY_OVERRIDES


# ---------------------------------------------------------------------- issue 13 C3: provenance
def test_meta_and_report_record_versions_device_and_commit(finished_store, tmp_path):
    import platform

    import torch

    import torchfpe

    out = copy_of(finished_store, tmp_path)
    meta = json.loads((out / "meta.json").read_text())
    made = meta["provenance"]
    assert (made["torchfpe"], made["torch"], made["python"]) == (torchfpe.__version__, torch.__version__,
                                                                 platform.python_version())
    assert "CPU" in made["device"] and "backend local" in made["device"]
    head = subprocess.run(["git", "-C", str(Path(torchfpe.__file__).parent), "rev-parse", "HEAD"],
                          capture_output=True, text=True)
    if head.returncode == 0:  # a git checkout of torchfpe (as in CI and here)
        assert made["git_commit"] == head.stdout.strip()
    report = (out / "report.md").read_text()
    line = next(line for line in report.splitlines() if line.startswith("- Made with: "))
    assert f"torch {torch.__version__}" in line and f"Python {platform.python_version()}" in line
    # a resumed folder keeps what its earlier runs were made with
    meta["provenance"] = dict(made, torch="1.0.0")
    (out / "meta.json").write_text(json.dumps(meta))
    api.run_study("boolean", "headline", seeds=2, overrides=TINY_OVERRIDES, out=out, backend="local", quiet=True)
    again = json.loads((out / "meta.json").read_text())
    assert again["provenance"] == made and again["provenance_earlier"][0]["torch"] == "1.0.0"
    assert "- Earlier runs in this folder made with: torchfpe" in (out / "report.md").read_text()
