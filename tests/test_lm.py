"""The language-model experiment: byte-level GPT-2 and LLaMA on text, bits/byte, the variant grammar, bad input."""

import csv
import json
import math
import os
import shutil
import subprocess

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from torchfpe.lab.experiments import protocol

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytest.importorskip("transformers")

from torchfpe.lab.cli import app  # noqa: E402
from torchfpe.data import text as text_module  # noqa: E402
from torchfpe.lab.experiments import lm  # noqa: E402

TINY = dict(d_model=16, layers=1, heads=2, d_ff=16, context=16, batch_size=4, warmup_steps=3, steps_after=3,
            eval_bytes=256)
VERSE = "In the beginning God created the heaven and the earth. And the earth was without form, and void.\n"


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(VERSE * 40 + "Ünïcödé ok.\n", encoding="utf-8")
    return str(path)


def config(corpus, **fields):
    return lm.EXPERIMENT.make_config(data_dir=corpus, **{**TINY, **fields})


# ----------------------------------------------------------------------------------------- runs
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_every_kind_of_variant_runs_at_the_parents_count(corpus, arch):
    variants = "dense+random+grouped@structured+random@outgoing+random@carry+static_sparse+wide2"
    records = lm.EXPERIMENT.run_batch([config(corpus, arch=arch, variants=variants, seed=s) for s in (0, 1)])
    assert [(r["variant"], r["seed"]) for r in records] == [(v, s) for v in variants.split("+") for s in (0, 1)]
    by = {(r["variant"], r["seed"]): r for r in records}
    for (variant, seed), record in by.items():
        dense = by[("dense", seed)]
        assert 0 < record["bits_per_byte"] < 9 and record["dataset"].startswith("corpus.txt")
        assert record["relative_gain"] == pytest.approx((dense["bits_per_byte"] - record["bits_per_byte"])
                                                        / dense["bits_per_byte"])
        assert record["hidden_units"] == {"dense": 16, "wide2": 32}.get(variant, 32)
        if variant in ("random", "grouped@structured", "random@outgoing", "random@carry", "static_sparse"):
            assert record["nonzero_parameters"] == dense["nonzero_parameters"], variant
            assert record["ffn_nonzero"] == dense["ffn_nonzero"], variant
    assert by[("dense", 0)]["relative_gain"] == 0.0
    structured, dense = by[("grouped@structured", 0)], by[("dense", 0)]
    assert (structured["ffn_in_nonzero"], structured["ffn_out_nonzero"]) == (dense["ffn_in_nonzero"],
                                                                             dense["ffn_out_nonzero"])
    assert by[("wide2", 0)]["ffn_nonzero"] == pytest.approx(2 * dense["ffn_nonzero"], rel=0.05)
    assert by[("random@outgoing", 0)]["ffn_out_nonzero"] <= dense["ffn_out_nonzero"]  # the copies were pruned there


def test_runs_are_reproducible_and_seeds_differ(corpus):
    first = lm.EXPERIMENT.run_batch([config(corpus, variants="dense+random@carry")])
    again = lm.EXPERIMENT.run_batch([config(corpus, variants="dense+random@carry")])
    other = lm.EXPERIMENT.run_batch([config(corpus, variants="dense+random@carry", seed=1)])
    assert [r["bits_per_byte"] for r in first] == [r["bits_per_byte"] for r in again]
    assert first[0]["bits_per_byte"] != other[0]["bits_per_byte"]


def test_carry_changes_only_the_optimizer(corpus):
    """random and random@carry expand the same warm model the same way; only the optimizer state differs."""
    records = {r["variant"]: r for r in lm.EXPERIMENT.run_batch([config(corpus, variants="random+random@carry")])}
    assert records["random"]["ffn_layer_nonzero"] == records["random@carry"]["ffn_layer_nonzero"]
    assert records["random"]["bits_per_byte"] != records["random@carry"]["bits_per_byte"]


def test_training_lowers_bits_per_byte(corpus):
    untrained = lm.TASK.parent(config(corpus))
    data = lm.TASK.data(config(corpus))
    before = lm.bits_per_byte(untrained, data.x_train, 16, None)
    lm.TASK.train(untrained, config(corpus, lr=1e-2), data, 60, torch.Generator().manual_seed(0))
    assert lm.bits_per_byte(untrained, data.x_train, 16, None) < before - 1


class Uniform(nn.Module):
    """Equal logits for the 256 bytes: exactly 8 bits per byte."""

    def forward(self, input_ids):
        return type("Out", (), {"logits": torch.zeros(*input_ids.shape, 256)})()


def test_bits_per_byte_of_a_uniform_model_is_eight():
    stream = torch.arange(1000) % 256
    assert lm.bits_per_byte(Uniform(), stream.to(torch.uint8), 10, None) == pytest.approx(8.0)
    assert lm.bits_per_byte(Uniform(), stream.to(torch.uint8), 10, 100) == pytest.approx(8.0)


def test_wide_width_matches_the_ffn_count():
    cfg = lm.EXPERIMENT.make_config(d_ff=64, arch="llama")
    assert lm.wide_width(2.0, cfg) == 128 and lm.wide_width(1.5, cfg) == 96


# ------------------------------------------------------------------------------------ the grammar
def test_variant_grammar_reads_budgets_and_carry():
    assert protocol.parse_variant("random@structured") == protocol.Variant("random@structured", "split", "random",
                                                                           budget="structured")
    assert protocol.parse_variant("grouped@outgoing@carry").carry
    assert protocol.parse_variant("random@carry") == protocol.Variant("random@carry", "split", "random", carry=True)
    assert protocol.parse_variant("wide1.5").scale == 1.5 and protocol.parse_variant("dense").kind == "dense"
    for bad in ("random@carry@structured", "random@bogus", "dense@carry", "wide2@carry", "random@", "@carry"):
        with pytest.raises(ValueError, match="unknown variant"):
            protocol.parse_variant(bad)
    with pytest.raises(ValueError, match="drawn at initialisation"):
        protocol.parse_variant("static_sparse@carry")
    assert protocol.split_of("feature@layerwise") == "feature" and protocol.split_of("wide2") is None
    assert protocol.phase("random@carry") == 1 and protocol.phase("static_sparse@global") == 2


def test_structured_budget_refuses_splits_that_are_not_partitions(corpus):
    from torchfpe import InvalidParameterError

    with pytest.raises(InvalidParameterError, match="overlap.*not one.*overlap@global"):
        config(corpus, variants="dense+overlap@structured")
    with pytest.raises(InvalidParameterError, match="overlap"):
        config(corpus, variants="dense+overlap", budget="structured")
    with pytest.raises(InvalidParameterError, match="more than once"):
        config(corpus, variants="dense+random+random")
    assert config(corpus, variants="dense+overlap@global", budget="structured").variants[1] == "overlap@global"


def test_relative_gain_is_signed_so_that_positive_is_better():
    records = [{"seed": 0, "variant": "dense", "bpb": 2.0}, {"seed": 0, "variant": "random", "bpb": 1.5},
               {"seed": 0, "variant": "grouped", "bpb": 2.5}]
    protocol.add_relative(records, metric="bpb", higher_is_better=False)
    assert [r["relative_gain"] for r in records] == [0.0, 0.25, -0.25]


def test_modified_variants_run_in_the_stacked_protocol_too():
    """The Boolean experiment (stacked) takes the same grammar; @carry runs there one model at a time."""
    from torchfpe.lab.experiments import boolean

    base = dict(warmup_epochs=3, epochs_after=3, train_size=200, test_size=200)
    variants = "dense+random+random@structured+random@carry"
    records = boolean.EXPERIMENT.run_batch([boolean.EXPERIMENT.make_config(**base, variants=variants, seed=s)
                                            for s in (0, 1)])
    single = [r for s in (0, 1) for r in boolean.EXPERIMENT.run_single(
        boolean.EXPERIMENT.make_config(**base, variants=variants, seed=s))]
    key = lambda r: (r["variant"], r["seed"])  # noqa: E731
    assert sorted(map(key, records)) == sorted(map(key, single))
    for got, want in zip(sorted(records, key=key), sorted(single, key=key)):
        assert got["test_accuracy"] == pytest.approx(want["test_accuracy"])
        assert got["nonzero_parameters"] == want["nonzero_parameters"]


# ------------------------------------------------------------------------------------------ data
def test_a_folder_of_text_files_is_read_in_path_order(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "two.txt").write_text("second", encoding="utf-8")
    (tmp_path / "a.txt").write_text("first", encoding="utf-8")
    (tmp_path / "ignored.md").write_text("no", encoding="utf-8")
    assert text_module.read_text(tmp_path) == b"first\nsecond"


def test_text_is_cut_into_contiguous_parts():
    parts = text_module.split_text(bytes(range(200)), "x", "x")
    assert (len(parts.train), len(parts.val), len(parts.test)) == (180, 10, 10)
    assert torch.equal(torch.cat([parts.train, parts.val, parts.test]), torch.arange(200, dtype=torch.uint8))


@pytest.mark.parametrize("content, message", [
    (b"", "empty"), (b"   \n", "empty"), (b"caf\xe9 au lait", r"not UTF-8 text \(byte 0xe9 at offset 3"),
])
def test_unusable_text_files_are_named(tmp_path, content, message):
    path = tmp_path / "text.txt"
    path.write_bytes(content)
    with pytest.raises(text_module.TextError, match=rf"text\.txt: .*{message}"):
        text_module.read_text(path)


def test_missing_corpus_says_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(text_module.shutil, "which", lambda name: None)
    with pytest.raises(text_module.TextError, match="apt-get install bible-kjv.*--data FILE"):
        text_module.kjv_path(tmp_path)


@pytest.mark.skipif(shutil.which("bible") is None, reason="Debian package bible-kjv not installed")
def test_kjv_is_written_once_to_the_cache(tmp_path, monkeypatch):
    path = text_module.kjv_path(tmp_path)
    assert path.stat().st_size == text_module.KJV_BYTES and [p.name for p in tmp_path.iterdir()] == ["bible-kjv.txt"]
    assert path.read_bytes().startswith(b"Ge1:1 In the beginning God created the heaven and the earth.")

    def refuse(*args, **kwargs):
        raise AssertionError("the cached file must be reused")

    monkeypatch.setattr(subprocess, "run", refuse)
    assert text_module.kjv_path(tmp_path) == path


# ------------------------------------------------------------------------------------- bad input
def run(*args, env=None):
    return CliRunner(env=env).invoke(app, ["reproduce", "lm", "--backend", "local", "--quiet", "--seeds", "1", *args])


def refused(result, out, code, *words):
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output and all(w in result.output for w in words), result.output
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("content, words", [
    (b"", ["empty.txt", "empty"]), (b"\xff\xfe bad", ["empty.txt", "not UTF-8"]),
    (b"short text, longer than nothing", ["empty.txt", "too short for context=64"]),
])
def test_bad_text_files_exit_1_before_anything_is_written(tmp_path, content, words):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    out = tmp_path / "out"
    refused(run("--data", str(path), "--out", str(out)), out, 1, *words)


@pytest.mark.parametrize("setting, field", [
    ("context=0", "context"), ("context=100000", "context"), ("d_ff=0", "d_ff"), ("d_ff=-3", "d_ff"),
    ("arch=bert", "arch"), ("heads=3", "heads"), ("variants=dense+overlap@structured", "variants"),
])
def test_bad_fields_exit_2_naming_the_field(tmp_path, corpus, setting, field):
    out = tmp_path / "out"
    refused(run("--data", corpus, "--out", str(out), "--set", setting), out, 2, field)


def test_a_missing_corpus_exits_1_with_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(text_module.shutil, "which", lambda name: None)
    text_module.load_text.cache_clear()
    out = tmp_path / "out"
    try:
        refused(run("--out", str(out), env={"TORCHFPE_CACHE_DIR": str(tmp_path / "cache")}), out, 1,
                "bible-kjv", "--data")
    finally:
        text_module.load_text.cache_clear()


def test_reproduce_lm_on_a_users_text_file(tmp_path, corpus):
    out = tmp_path / "lm"
    sets = [f"{k}={v}" for k, v in TINY.items()]
    result = run("--study", "width", "--data", corpus, "--out", str(out), "--set", "d_ff=[8,16]",
                 "--set", "variants=dense+random+random@carry", *[a for s in sets if not s.startswith("d_ff")
                                                                 for a in ("--set", s)], "--seeds", "2")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "records.csv").open()))
    assert len(rows) == 2 * 2 * 3 and {r["variant"] for r in rows} == {"dense", "random", "random@carry"}
    meta = json.loads((out / "meta.json").read_text())
    assert meta["metric"]["key"] == "bits_per_byte" and meta["metric"]["higher_is_better"] is False
    assert all(math.isfinite(float(r["bits_per_byte"])) for r in rows)


@pytest.mark.slow
def test_reproduce_lm_on_the_bible_for_both_architectures(tmp_path):
    """The default corpus end to end, GPT-2 and LLaMA, short (the reproduction check of the lm group)."""
    if shutil.which("bible") is None and not (text_module.default_cache_dir() / text_module.KJV_FILE).is_file():
        pytest.skip("Debian package bible-kjv not installed")
    sets = ["d_model=32", "layers=1", "heads=2", "context=32", "batch_size=8", "warmup_steps=20", "steps_after=20",
            "eval_bytes=4096", "d_ff=[32]", "variants=dense+random+grouped@structured"]
    for arch in ("gpt2", "llama"):
        out = tmp_path / arch
        result = CliRunner().invoke(app, ["reproduce", "lm", "--study", "budget", "--out", str(out), "--backend",
                                          "local", "--quiet", "--seeds", "2", "--set", f"arch={arch}",
                                          *[a for s in sets for a in ("--set", s)]])
        assert result.exit_code == 0, result.output
        rows = list(csv.DictReader((out / "records.csv").open()))
        assert {r["dataset"] for r in rows} == {text_module.KJV_NAME} and len(rows) == 2 * 3
        dense = [float(r["bits_per_byte"]) for r in rows if r["variant"] == "dense"]
        assert all(d < 7.0 for d in dense), "40 steps on the Bible already beat a uniform guess (8 bits/byte)"
        assert (out / "report.md").is_file()
