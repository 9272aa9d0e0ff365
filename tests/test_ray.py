"""The Ray backend against a local Ray cluster started by the test."""

import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'torchfpe[ray]')")

from torchfpe.sweep import ResultStore, execute, make_jobs  # noqa: E402

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
