"""`torchfpe reproduce heads|deep|cnn` end to end on tiny data, and bad input."""

import csv
import json

from typer.testing import CliRunner

from test_real_experiments import NAME, embedding_file, fashion_dir  # noqa: F401 - fixtures
from torchfpe.lab.cli import app

TINY = ["--set", "warmup_epochs=1", "--set", "epochs_after=1", "--backend", "local", "--quiet", "--seeds", "2"]


def run(*args):
    return CliRunner().invoke(app, [*args])


def test_reproduce_heads_on_a_users_embedding_file(tmp_path, embedding_file):  # noqa: F811
    out = tmp_path / "heads"
    result = run("reproduce", "heads", "--study", "width", "--embeddings", embedding_file, "--out", str(out),
                 "--set", "neurons=[2,4]", "--set", "alpha=[2]", "--set", "batch_size=64", *TINY)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "records.csv").open()))
    assert len(rows) == 2 * 2 * 6 and {r["dataset"] for r in rows} == {NAME}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["group"] == "heads" and meta["page"] == "cells"
    report = (out / "report.md").read_text()
    assert all(NAME in line for line in report.splitlines() if line.startswith("**Table"))


def test_reproduce_cnn_reads_the_data_folder(tmp_path, fashion_dir):  # noqa: F811
    out = tmp_path / "cnn"
    result = run("reproduce", "cnn", "--data", fashion_dir, "--out", str(out), "--set", "neurons=[4]",
                 "--set", "train_size=None", "--set", "batch_size=32", *TINY)
    assert result.exit_code == 0, result.output
    assert "Fashion-MNIST images" in (out / "report.md").read_text()


def test_a_bad_embedding_file_fails_before_anything_is_written(tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an npz")
    out = tmp_path / "never"
    result = run("reproduce", "heads", "--embeddings", str(bad), "--out", str(out), *TINY)
    assert result.exit_code == 1 and "bad.npz" in result.output and "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())


def test_alpha_above_the_embedding_features_fails_before_anything_is_written(tmp_path, embedding_file):  # noqa: F811
    out = tmp_path / "never"  # the tiny file has 12 features
    result = run("reproduce", "heads", "--embeddings", embedding_file, "--out", str(out), "--set", "alpha=16",
                 "--set", "neurons=[4]", *TINY)
    assert result.exit_code == 2, result.output
    assert "alpha" in result.output and "12 features" in result.output and "Traceback" not in result.output
    assert not out.exists() or not any(out.iterdir())  # was: meta.json, .lock and an empty runs/ after the warm-up


def _clusters(path, shift):
    import numpy as np

    from torchfpe.data import write_embeddings

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 12)).astype(np.float32) + shift
    y = np.arange(60) % 3
    write_embeddings(path, x[:45], y[:45], x[45:], y[45:], ["a", "b", "c"], name="clusters", note="t", standin=True)


def test_a_data_file_replaced_at_the_same_path_is_refused_not_reused(tmp_path):
    """Issue 13 B4: run keys hold the file's path, so a replaced file once reused the old runs ("0 runs done")."""
    data, out = tmp_path / "emb.npz", tmp_path / "heads"
    args = ["reproduce", "heads", "--embeddings", str(data), "--out", str(out), "--set", "neurons=[4]",
            "--set", "alpha=[2]", "--set", "variants=dense+random", *TINY]
    _clusters(data, 0.0)
    assert run(*args).exit_code == 0
    keys = json.loads((out / "meta.json").read_text())["keys"]
    again = run(*args)  # unchanged file: every run is reused, under the same keys
    assert again.exit_code == 0 and json.loads((out / "meta.json").read_text())["keys"] == keys
    stored = sorted(p.name for p in (out / "runs").iterdir())
    _clusters(data, 5.0)  # new content at the same path
    changed = run(*args)
    assert changed.exit_code == 1, changed.output
    assert "emb.npz" in changed.output and "changed" in changed.output and "Traceback" not in changed.output
    assert sorted(p.name for p in (out / "runs").iterdir()) == stored
    assert run(*[a if a != str(out) else str(tmp_path / "fresh") for a in args]).exit_code == 0


def test_a_store_written_before_data_files_were_recorded_stays_valid(tmp_path):
    data, out = tmp_path / "emb.npz", tmp_path / "heads"
    args = ["reproduce", "heads", "--embeddings", str(data), "--out", str(out), "--set", "neurons=[4]",
            "--set", "alpha=[2]", "--set", "variants=dense+random", *TINY]
    _clusters(data, 0.0)
    assert run(*args).exit_code == 0
    meta = json.loads((out / "meta.json").read_text())
    meta.pop("data_files", None)  # as the code before issue 13 wrote it
    (out / "meta.json").write_text(json.dumps(meta))
    stored = {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()}
    assert run(*args).exit_code == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").iterdir()} == stored  # reused, not redone
    assert str(data) in json.loads((out / "meta.json").read_text())["data_files"]  # and checked from now on


def test_data_preparation_shows_a_spinner_unless_quiet(embedding_file, capsys, monkeypatch):  # noqa: F811
    """Issue 13 C1: the terminal was blank while the data were prepared (35 s for the stand-in)."""
    from torchfpe import _status
    from torchfpe.lab import api

    monkeypatch.setattr(_status, "QUIET_BELOW_S", 0.0)  # the tiny file loads at once: say so anyway
    configs = [dict(embeddings=embedding_file, neurons=4, seed=0)]
    api._make_jobs("heads", configs, quiet=False)
    shown = capsys.readouterr().out
    assert "preparing the heads data (config 1/1: embeddings=" in shown and "done in" in shown
    api._make_jobs("heads", configs, quiet=True)
    assert capsys.readouterr().out == ""
