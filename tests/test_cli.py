"""The command line end to end on tiny configs: the files it writes and what they hold."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from torchfpe.lab.cli import app

TINY = ["--set", "warmup_epochs=15", "--set", "epochs_after=15", "--set", "train_size=128", "--set", "test_size=128"]
PNG = b"\x89PNG\r\n\x1a\n"


def invoke(*args):
    result = CliRunner().invoke(app, [*args])
    assert result.exit_code == 0, result.output
    return result


def test_reproduce_headline_writes_records_report_and_figures(tmp_path):
    out = tmp_path / "headline"
    invoke("reproduce", "boolean", "--seeds", "2", "--out", str(out), "--backend", "local", "--quiet", *TINY)
    rows = list(csv.DictReader((out / "records.csv").open()))
    assert sorted((r["variant"], r["seed"]) for r in rows) == sorted(
        (v, s) for v in ("dense", "random", "clause") for s in ("0", "1"))
    assert {"variant", "seed", "test_accuracy", "clauses", "neurons", "alpha", "capacity_mean"} <= rows[0].keys()
    assert "hidden_weight" not in rows[0]
    report = (out / "report.md").read_text()
    assert "78.7" in report and "99.4" in report and "synthetic Boolean DNF" in report
    assert "clause − dense" in report
    for figure in ("accuracy.png", "gram.png", "weights.png"):
        assert (out / figure).read_bytes().startswith(PNG)
    # re-running with the same --out completes nothing new and keeps one row per (variant, seed)
    result = invoke("reproduce", "boolean", "--seeds", "3", "--out", str(out), "--backend", "local", *TINY)
    assert "1 runs done, 2 already" in result.output
    assert len(list(csv.DictReader((out / "records.csv").open()))) == 9
    # the report rebuilds from the store alone
    (out / "report.md").unlink()
    (out / "records.csv").unlink()
    invoke("report", str(out))
    assert len(list(csv.DictReader((out / "records.csv").open()))) == 9


def test_sweep_study_and_theory(tmp_path):
    out = tmp_path / "alpha"
    invoke("reproduce", "boolean", "--study", "alpha", "--seeds", "1", "--out", str(out), "--backend", "local",
           "--quiet", "--set", "alpha=[2,4]", *TINY)
    rows = list(csv.DictReader((out / "records.csv").open()))
    assert sorted({r["alpha"] for r in rows}) == ["2", "4"]
    assert (out / "accuracy_vs_alpha.png").exists() and (out / "gain_vs_alpha.png").exists()
    theory = tmp_path / "theory"
    invoke("reproduce", "boolean", "--study", "theory", "--out", str(theory), "--backend", "local", "--quiet",
           "--set", "trials=2000", "--set", "k=[2]")
    rows = list(csv.DictReader((theory / "records.csv").open()))
    assert len(rows) == 3 and all(float(r["collision_theory"]) == 2 ** -(3) for r in rows if r["alpha"] == "2")


def test_sweep_file_with_process_pool(tmp_path):
    spec = tmp_path / "grid.yaml"
    spec.write_text("experiment: boolean\nstudy: neurons\ngrid: {neurons: [4, 6]}\n"
                    "base: {warmup_epochs: 10, epochs_after: 10, train_size: 96, test_size: 96}\nseeds: 2\n")
    out = tmp_path / "grid"
    invoke("sweep", str(spec), "--out", str(out), "--backend", "process", "--workers", "2", "--quiet")
    meta = json.loads((out / "meta.json").read_text())
    assert meta["study"] == "neurons" and len(meta["keys"]) == 4
    assert len(list(csv.DictReader((out / "records.csv").open()))) == 4 * 3


@pytest.mark.parametrize("args, words", [
    (["reproduce", "boolean", "--study", "nope"], "is not one of"),
    (["reproduce", "boolean", "--set", "clauses"], "key=value"),
    (["reproduce", "boolean", "--set", "colour=red"], "unknown boolean config field 'colour'"),
    (["reproduce", "boolean", "--set", "neurons=0"], "neurons"),
])
def test_bad_arguments_fail_with_a_message(tmp_path, args, words):
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x"), "--quiet"])
    assert result.exit_code != 0
    assert words in result.output


def test_set_values_are_read_as_config_values():
    from torchfpe.lab.api import parse_overrides

    assert parse_overrides("boolean", ["encoding=01", "lr=5e-3", "neurons=[8, 16]", "batch_size=null",
                                       "variants=dense+random", "n_vars=null", "alpha=4", "lr=1"]) == {
        "encoding": "01", "lr": 1.0, "neurons": [8, 16], "batch_size": None, "variants": "dense+random",
        "n_vars": None, "alpha": 4}
    assert isinstance(parse_overrides("boolean", ["lr=1"])["lr"], float)


def test_console_script_is_installed():
    exe = Path(sys.executable).parent / "torchfpe"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env={**os.environ, "COLUMNS": "120"})
    assert result.returncode == 0 and "reproduce" in result.stdout
