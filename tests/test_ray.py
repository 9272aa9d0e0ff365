"""The Ray backend against a local Ray cluster started by the test."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'torchfpe[ray]')")

from torchfpe.lab.sweep import ResultStore, execute, make_jobs  # noqa: E402

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def local_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_backend_runs_and_resumes(local_cluster, tmp_path):
    configs = [dict(warmup_epochs=10, epochs_after=10, train_size=96, test_size=96, variants="dense+random",
                    neurons=n, seed=s) for n in (4, 6) for s in (0, 1)]
    store = ResultStore(tmp_path)
    summary = execute(make_jobs("boolean", configs), store, backend="ray", quiet=True)
    assert (summary["done"], summary["skipped"]) == (4, 0)
    assert ray.is_initialized(), "an existing cluster is left running"
    records = store.records()
    assert sorted((r["neurons"], r["seed"], r["variant"]) for r in records) == sorted(
        (n, s, v) for n in (4, 6) for s in (0, 1) for v in ("dense", "random"))
    # the same records as in-process
    local = ResultStore(tmp_path / "local")
    execute(make_jobs("boolean", configs), local, backend="local", quiet=True)
    by_key = {(r["neurons"], r["seed"], r["variant"]): r["test_accuracy"] for r in local.records()}
    for record in records:
        assert record["test_accuracy"] == pytest.approx(by_key[(record["neurons"], record["seed"], record["variant"])], abs=1e-6)
    again = execute(make_jobs("boolean", configs), store, backend="ray", quiet=True)
    assert (again["done"], again["skipped"]) == (0, 4)


# ------------------------------------------------------------------ issue 13 B6: no orphans after SIGKILL
SWEEP = """
import sys
from torchfpe.lab.sweep import ResultStore, execute, make_jobs

if __name__ == "__main__":
    quick = dict(warmup_epochs=1, epochs_after=1, train_size=64, test_size=64, variants="dense", neurons=4, seed=0)
    slow = dict(quick, warmup_epochs=10**6, neurons=6)  # still running when the command is killed
    execute(make_jobs("boolean", [quick, slow]), ResultStore(sys.argv[1]), backend="ray", quiet=True)
"""


def _descendants(root: int) -> dict[int, tuple[bytes, bytes]]:
    """{pid: (start time, name)} of every living descendant of ``root`` (from /proc)."""
    parents, info = {}, {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat", "rb").read()
                cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
            except OSError:
                continue
            fields = stat[stat.rindex(b")") + 2:].split()
            parents[int(entry)] = int(fields[1])
            info[int(entry)] = (fields[19], cmdline.split(b"\0")[0])
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = info[pid]
                frontier.append(pid)
    return found


def _alive(pid: int, start: bytes) -> bool:
    try:
        stat = open(f"/proc/{pid}/stat", "rb").read()
    except OSError:
        return False
    fields = stat[stat.rindex(b")") + 2:].split()
    return fields[19] == start and fields[0] != b"Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_local_cluster_goes_when_the_command_is_killed(tmp_path):
    script, store = tmp_path / "sweep.py", tmp_path / "store"
    script.write_text(SWEEP)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                           os.environ.get("PYTHONPATH", "")])}
    command = subprocess.Popen([sys.executable, str(script), str(store)], env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: dict[int, tuple[bytes, bytes]] = {}
    try:
        deadline = time.monotonic() + 150
        while not list((store / "runs").glob("*.run.json")):  # the quick run is saved: the cluster works
            assert command.poll() is None and time.monotonic() < deadline, "the sweep ended or hung"
            time.sleep(0.5)
        seen = _descendants(command.pid)
        assert any(name.startswith(b"ray::") for _, name in seen.values()), seen  # agents and workers are up
        command.kill()
        command.wait()
        deadline = time.monotonic() + 30
        while any(_alive(pid, start) for pid, (start, _) in seen.items()) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = {pid: name for pid, (start, name) in seen.items() if _alive(pid, start)}
        assert not left, f"processes left after SIGKILL of the command: {left}"
    finally:
        if command.poll() is None:
            command.kill()
        for pid, (start, _) in seen.items():  # never leave our own processes behind, even when failing
            if _alive(pid, start):
                os.kill(pid, signal.SIGKILL)


def test_the_guarded_local_cluster_is_given_each_units_device(tmp_path, monkeypatch):
    """A local cluster runs behind the guard process: every unit sent to it names the device (it used to
    be dropped there, so ``--device`` was silently ignored on ``--backend ray`` without ``--address``)."""
    from torchfpe.lab.sweep import ray_guard, runner
    from torchfpe.lab.sweep.unit import gpus_per_unit, run_unit

    sent = []

    class FakeGuard:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def run(self, units):
            for unit in units:
                sent.append(unit)
                yield run_unit(*unit)

    monkeypatch.setattr(runner, "_RayGuard", FakeGuard)
    monkeypatch.setattr(ray_guard, "available", lambda: True)
    if ray.is_initialized():
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
    configs = [dict(warmup_epochs=2, epochs_after=2, train_size=32, test_size=32, variants="dense+random", seed=s)
               for s in (0, 1)]
    summary = execute(make_jobs("boolean", configs), ResultStore(tmp_path), backend="ray", quiet=True, device="cpu")
    assert summary["done"] == 2
    # (experiment, configs, threads, device, layout, plugins): the device travels with every unit
    assert sent and all(len(unit) == 6 and str(unit[3]) == "cpu" for unit in sent)
    assert (gpus_per_unit("cuda"), gpus_per_unit("cuda:1"), gpus_per_unit("cpu"), gpus_per_unit(None)) == (1, 1, 0, 0)
