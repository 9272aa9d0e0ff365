"""Every script in bench/ still runs: ``--help``, and a tiny ``--smoke`` run whose JSON holds its results.

Scripts are found by glob, so a new one is covered without an edit here; the checks of what each
known script's JSON must hold are in :data:`RESULT_CHECKS` (a script without an entry gets the
generic checks only). Timings are never asserted (benchmarks are not timed tests). The flags each
script's command in docs/benchmarks.md uses must be in its ``--help``.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
DOC = ROOT / "docs" / "benchmarks.md"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))
ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def run(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=ENV, cwd=cwd,
                          timeout=300, check=False)


def finite_numbers(value) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value] if math.isfinite(value) else []
    if isinstance(value, dict):
        return [x for v in value.values() for x in finite_numbers(v)]
    if isinstance(value, list):
        return [x for v in value for x in finite_numbers(v)]
    return []


# --------------------------------------------------------------------------- per-script results
def check_packed(data: dict) -> None:
    meta = data["meta"]
    assert meta["kind"] == "grid"
    grid = meta["grid"]
    configs = len(grid["widths"]) * len(grid["depths"]) * len(grid["alphas"]) * len(grid["splits"])
    assert len(data["rows"]) == (configs - len(meta["skipped"])) * len(grid["batches"]) > 0
    for row in data["rows"]:
        modes = {f"{mode}/{model}" for mode in ("forward", "forward_backward") for model in ("dense", "masked", "packed")}
        assert set(row["times"]) == modes  # the smoke grid is narrow enough to time the masked model too
        assert all(t["ratio"] > 0 and t["seconds"] > 0 and t["spread"] >= 0 for t in row["times"].values())
        assert row["times"]["forward/dense"]["ratio"] == 1.0
        assert row["nonzero"]["packed"] == row["nonzero"]["dense"]  # FPE: same non-zero count as the parent
        assert row["bytes"]["packed"] < row["bytes"]["masked"]
        assert row["bytes_ratio"]["packed"] == round(row["bytes"]["packed"] / row["bytes"]["dense"], 3)
        assert len(row["packed_layouts"]) == row["hidden_layers"] + 1


def check_gpu(data: dict) -> None:
    meta, grid = data["meta"], data["meta"]["grid"]
    shapes = len(grid["shapes"]) - len(meta["skipped_shapes"])
    assert len(data["rows"]) == shapes * len(grid["dtypes"]) * len(grid["batches"]) > 0
    timed = {"dense", "masked", "block_torch"} | ({"block", "parent"} if meta["kernels"] else set())
    for row in data["rows"]:
        assert timed <= set(row["variants"]) and row["variants"]["dense"]["ratio_to_dense"] == 1.0
        assert all(v["ms"] > 0 for v in row["variants"].values())
    if meta["kernels"]:  # Triton installed: the kernels ran (interpreted on a CPU) and matched
        assert len(data["checks"]) == 2 * shapes * len(grid["dtypes"]) and meta["all_checks_ok"]
        assert all(c["triton"] for c in data["checks"])


def check_gpu_models(data: dict) -> None:
    grid = data["meta"]["grid"]
    assert len(data["layers"]) == len(grid["widths"]) * len(grid["alphas"]) * len(grid["splits"]) * \
        len(grid["dtypes"]) * len(grid["batches"])
    for row in data["layers"]:
        assert {"forward/dense", "forward/masked", "forward/packed"} <= set(row["ratio_to_dense"])
        assert row["bytes_ratio"] < 2
    assert {row["split"] for row in data["training"]} == set(grid["splits"])
    studies = data["studies"]
    assert set(studies) == {"headline", "headline_cpu", "heads", "headline_vs_cpu"}
    assert studies["headline_vs_cpu"]["records"] == 3 * grid["seeds"]
    assert all(0.0 <= a <= 1.0 for a in studies["headline"]["mean_test_accuracy"].values())


def check_boolean_throughput(data: dict) -> None:
    ways = {"one_model_at_a_time", "batched", "batched_process_pool"}
    assert set(data["seconds"]) == ways and all(s > 0 for s in data["seconds"].values())
    assert set(data["max_test_accuracy_difference_vs_one_model"]) == ways - {"one_model_at_a_time"}
    for way in ways:
        accuracies = data["mean_test_accuracy"][way]
        assert set(accuracies) == set(data["config"]["variants"].split("+"))
        assert all(0.0 <= a <= 1.0 for a in accuracies.values())


def check_shared_split_accuracy(data: dict) -> None:
    seeds = len(data["meta"]["seeds"])
    boolean, digits = data["boolean_headline"], data["digits_mlp_64_16_10"]
    assert set(boolean) == {"dense", "random", "shared", "groups2", "groups4", "clause"}
    assert set(digits) == {"dense"} | {f"{s} a={a}" for s in ("random", "shared", "groups4") for a in (2, 4)}
    for name, row in [*boolean.items(), *digits.items()]:
        assert len(row["values"]) == seeds and all(0.0 <= v <= 1.0 for v in row["values"])
        assert ("minus_random_mean" in row) == name.startswith(("shared", "groups"))


def check_stack_layout(data: dict) -> None:
    assert all(ms > 0 for ms in data["first_layer_ms"].values()) and set(data["first_layer_ms"]) == {
        "examples_by_units", "units_by_examples"}
    assert data["stacked_step_ms_per_model"] > 0 and 0.0 <= data["matrix_product_share_of_step"] <= 1.0


def check_lm_steps(data: dict) -> None:
    assert data["rows"]
    for row in data["rows"]:
        assert set(row["step_seconds"]) == {"dense", "fpe_masked", "fpe_packed_block"}
        assert all(s > 0 for s in row["step_seconds"].values()) and row["ratio_to_dense"]["dense"] == 1.0
        assert row["width_run_cpu_seconds"] > 0 and row["tokens_per_step"] == row["batch"] * row["context"]


def check_memory(data: dict) -> None:
    assert data["rows"] and data["complete"]
    for row in data["rows"]:
        assert set(row["resident"]) == {"parent", "masked", "packed"} and row["resident_ratio"]["parent"] == 1.0
        # the masked layout holds a dense weight and a boolean mask per expanded layer: more than the parent
        assert row["resident"]["masked"] > row["resident"]["parent"] and row["layouts"]
        assert all(b > 0 for model in row["peak_extra"].values() for b in model.values())


RESULT_CHECKS = {"memory.py": check_memory, "gpu.py": check_gpu, "gpu_models.py": check_gpu_models,
                 "packed.py": check_packed, "lm_steps.py": check_lm_steps, "boolean_throughput.py": check_boolean_throughput,
                 "shared_split_accuracy.py": check_shared_split_accuracy, "stack_layout.py": check_stack_layout}


# ---------------------------------------------------------------------------------------- tests
def documented_flags(script: Path) -> list[set[str]]:
    """The ``--flags`` of each command in docs/benchmarks.md's code blocks that runs ``script``."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0]
            if f"bench/{script.name}" in line:
                commands.append(set(re.findall(r"(?<!\S)--[a-z][a-z0-9-]*", line)))
    return commands


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bench_script_help_smoke_and_documented_flags(script, tmp_path):
    help_ = run(script, "--help", cwd=tmp_path)
    assert help_.returncode == 0, help_.stderr
    assert "--smoke" in help_.stdout and "--out" in help_.stdout
    commands = documented_flags(script)
    assert commands, f"docs/benchmarks.md shows no command for bench/{script.name}"
    for flags in commands:
        assert flags <= set(re.findall(r"--[a-z][a-z0-9-]*", help_.stdout)), flags

    refused = run(script, "--smoke", cwd=tmp_path)  # a smoke run never writes to the default bench/results/
    assert refused.returncode == 2 and "--smoke needs --out" in refused.stderr
    out = tmp_path / "smoke.json"
    done = run(script, "--smoke", "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert isinstance(data, dict) and data.get("meta", data)["smoke"] is True
    assert finite_numbers({k: v for k, v in data.items() if k != "meta"})
    assert [p.name for p in tmp_path.iterdir()] == ["smoke.json"]  # nothing else written (cwd is tmp_path)
    check = RESULT_CHECKS.get(script.name)
    if check is not None:
        check(data)


@pytest.mark.parametrize("mode", ["--ffn", "--small"])
def test_packed_ffn_and_small_modes_run(mode, tmp_path):
    out = tmp_path / "smoke.json"
    done = run(BENCH / "packed.py", "--smoke", mode, "--out", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["meta"]["kind"] == mode[2:] and data["rows"]
    for row in data["rows"]:
        assert all(t["ratio"] > 0 for t in row["times"].values())
        if mode == "--ffn":
            assert row["nonzero"]["packed"] == row["nonzero"]["dense"]
            assert row["budget"] != "structured" or row["bytes_ratio"] <= 1.15


@pytest.mark.parametrize("script", ["gpu.py", "gpu_models.py"])
def test_gpu_refuses_a_missing_device_before_any_work(tmp_path, script):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    done = run(BENCH / script, "--out", str(tmp_path / "gpu.json"), cwd=tmp_path)
    assert done.returncode == 2 and "no CUDA device" in done.stderr and not any(tmp_path.iterdir())


def test_packed_table_reproduces_the_documented_tables(capsys):
    """``bench/packed.py --table`` on the stored results prints the tables of docs/benchmarks.md."""
    spec = importlib.util.spec_from_file_location("bench_packed", BENCH / "packed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    doc = DOC.read_text()
    for name in ("packed_memory.json", "packed_ffn.json", "packed_small.json"):
        module.table(BENCH / "results" / name)
        lines = capsys.readouterr().out.splitlines()
        assert len(lines) > 2 and all(line in doc for line in lines), name
