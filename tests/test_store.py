"""The result store: atomic runs, skip-on-rerun, kill-safety, and loud failure on foreign files."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from torchfpe.lab.sweep import ResultStore, StoreError, config_key, execute, make_jobs

FAST = dict(warmup_epochs=5, epochs_after=5, train_size=64, test_size=64, variants="dense+random")


def test_put_is_atomic_and_never_overwrites(tmp_path):
    store = ResultStore(tmp_path)
    key = config_key("boolean", {"a": 1})
    store.put(key, {"a": 1}, [{"x": 1}])
    store.put(key, {"a": 1}, [{"x": 2}])
    assert store.load(key)["records"] == [{"x": 1}]
    assert store.keys() == [key]
    assert not [p for p in (tmp_path / "runs").iterdir() if p.name.startswith(".tmp-")]


def test_key_depends_on_every_field_and_experiment():
    assert config_key("boolean", {"a": 1, "b": 2}) == config_key("boolean", {"b": 2, "a": 1})
    assert config_key("boolean", {"a": 1}) != config_key("boolean", {"a": 2})
    assert config_key("boolean", {"a": 1}) != config_key("theory", {"a": 1})


def test_rerun_skips_finished_runs(tmp_path):
    store = ResultStore(tmp_path)
    jobs = make_jobs("boolean", [dict(FAST, seed=s) for s in range(3)])
    first = execute(jobs, store, quiet=True)
    second = execute(jobs, store, quiet=True)
    assert (first["done"], first["skipped"]) == (3, 0)
    assert (second["done"], second["skipped"]) == (0, 3)
    assert len(store.records()) == 6


def test_corrupt_and_foreign_files_are_reported_not_overwritten(tmp_path):
    store = ResultStore(tmp_path)
    jobs = make_jobs("boolean", [dict(FAST, seed=0)])
    execute(jobs, store, quiet=True)
    path = store.path(jobs[0].key)
    path.write_text('{"schema": "torchfpe.run/1", "key": "')  # torn by hand
    with pytest.raises(StoreError, match="corrupt"):
        execute(jobs, store, quiet=True)
    assert path.read_text().endswith('"key": "'), "the corrupt file must be left for the user to inspect"
    path.write_text(json.dumps({"schema": "other", "key": jobs[0].key}))
    with pytest.raises(StoreError, match="not a torchfpe.run/1"):
        store.all_runs()
    path.unlink()
    (tmp_path / "runs" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="unexpected file"):
        execute(jobs, store, quiet=True)


def test_meta_refuses_another_study(tmp_path):
    store = ResultStore(tmp_path)
    store.write_meta({"study": "headline"})
    with pytest.raises(StoreError, match="another --out|not 'alpha'"):
        store.write_meta({"study": "alpha"})


SWEEP_SCRIPT = textwrap.dedent("""
    import sys
    from torchfpe.lab.sweep import ResultStore, execute, make_jobs
    configs = [dict(warmup_epochs=150, epochs_after=150, train_size=256, test_size=64, variants="dense+random",
                    neurons=n, seed=0) for n in range(2, 14)]
    execute(make_jobs("boolean", configs), ResultStore(sys.argv[1]), backend="local", quiet=True)
""")


def test_sigkill_mid_sweep_loses_only_runs_in_flight(tmp_path):
    script = tmp_path / "sweep.py"
    script.write_text(SWEEP_SCRIPT)
    out = tmp_path / "store"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, str(script), str(out)], env=env)
    deadline = time.time() + 120
    while time.time() < deadline and len(ResultStore(out).keys()) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = ResultStore(out).keys()
    assert 2 <= len(finished) < 12, "the kill should land mid-sweep"
    stamps = {key: ResultStore(out).path(key).stat().st_mtime_ns for key in finished}
    # re-run: exactly the missing runs are done, nothing is duplicated or torn
    subprocess.run([sys.executable, str(script), str(out)], env=env, check=True)
    store = ResultStore(out)
    runs = store.all_runs()
    assert len(runs) == 12 and len({run["key"] for run in runs}) == 12
    assert sorted(r["neurons"] for r in store.records() if r["variant"] == "dense") == list(range(2, 14))
    assert {key: store.path(key).stat().st_mtime_ns for key in finished} == stamps, "finished runs were redone"
