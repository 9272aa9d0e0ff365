"""The real pretrained all-MiniLM-L6-v2 through the Hugging Face path (issue 20 item 7): expand its six FFNs,
fine-tune a few steps, ``save_pretrained``, reload in a fresh process from the directory alone, identical
outputs; the non-zero count stays the parent's."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import torchfpe

if importlib.util.find_spec("all_minilm_l6_v2") is None or importlib.util.find_spec("transformers") is None \
        or importlib.util.find_spec("safetensors") is None:
    pytest.skip("the minilm and hf extras are not installed", allow_module_level=True)

RELOAD = """
import sys, torch, torchfpe
model = torchfpe.from_pretrained(sys.argv[1]).eval()
ids = torch.load(sys.argv[2])
with torch.no_grad():
    out = model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).last_hidden_state
torch.save(out, sys.argv[3])
print(type(model).__name__, torchfpe.nonzero_parameters(model))
"""


def test_minilm_expanded_fine_tuned_saved_and_reloaded_in_a_fresh_process(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHFPE_CACHE_DIR", str(tmp_path / "cache"))
    from torchfpe.data.minilm import load_minilm

    tokenizer, parent = load_minilm()
    parent.requires_grad_(True).train()
    pairs = torchfpe.find_ffn_pairs(parent)
    assert len(pairs) == 6  # intermediate.dense -> output.dense in each of the 6 layers
    wide = torchfpe.expand(parent, alpha=2, pairs=pairs, split="random", seed=0)
    assert torchfpe.trainable_positions(wide) == torchfpe.trainable_positions(parent)
    batch = tokenizer(["a fortune favours the bold", "the cat sat on the mat", "stocks fell sharply today",
                       "never trust a computer you cannot lift"], padding=True, return_tensors="pt")
    optimizer = torch.optim.AdamW(wide.parameters(), lr=1e-4)
    target = torch.randn(4, 384, generator=torch.Generator().manual_seed(0))
    for _ in range(3):  # a few steps of fine-tuning (any loss: the point is the weights move, masks hold)
        optimizer.zero_grad()
        pooled = wide(**batch).last_hidden_state.mean(dim=1)
        torch.nn.functional.mse_loss(pooled, target).backward()
        optimizer.step()
    assert all(layer.masked_out_nonzero() == 0 for _, layer in torchfpe.core.layouts.expanded_layers(wide))
    wide.eval()
    with torch.no_grad():
        expected = wide(**batch).last_hidden_state
    torchfpe.save_pretrained(wide, tmp_path / "wide")
    assert {"config.json", "model.safetensors"} <= {p.name for p in (tmp_path / "wide").iterdir()}
    torch.save({"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}, tmp_path / "ids.pt")
    done = subprocess.run([sys.executable, "-c", RELOAD, str(tmp_path / "wide"), str(tmp_path / "ids.pt"),
                           str(tmp_path / "out.pt")], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    name, nonzero = done.stdout.split()
    assert name == "BertModel" and int(nonzero) == torchfpe.nonzero_parameters(wide)
    assert torch.equal(torch.load(tmp_path / "out.pt"), expected)
