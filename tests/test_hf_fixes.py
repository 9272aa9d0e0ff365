"""Hugging Face models on the way to FPE (issue 15): reload, packed forward, FFN discovery, empty pairs.

Tiny random configs, no download (HF_HUB_OFFLINE=1).
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import torchfpe
from torchfpe import InvalidParameterError, expand, find_ffn_pairs, load_expanded, pack

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
SRC = Path(__file__).resolve().parents[1] / "src"


def gpt2_config():
    return transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2, bos_token_id=None,
                                   eos_token_id=None)


def llama_config():
    return transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                    num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)


def fresh(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "gpt2":
        return transformers.GPT2LMHeadModel(gpt2_config()).eval()
    return transformers.LlamaForCausalLM(llama_config()).eval()


def ids():
    return torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("packed", [False, True], ids=["masked", "packed"])
def test_expanded_hf_model_reloads_into_a_fresh_parent(kind, packed, tmp_path):
    """Saved expanded GPT-2 (Conv1D parents) and LLaMA models load into a newly built parent model."""
    model = fresh(kind)
    wide = expand(model, 2, "grouped", pairs=find_ffn_pairs(model), seed=0)
    if packed:
        wide = pack(wide)
    torch.save(wide.state_dict(), tmp_path / "wide.pt")
    loaded = load_expanded(fresh(kind, seed=1), torch.load(tmp_path / "wide.pt")).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids()).logits, wide.eval()(ids()).logits)
    assert torchfpe.nonzero_parameters(loaded) == torchfpe.nonzero_parameters(wide)


def test_gpt2_masked_and_packed_reload_in_a_fresh_process(tmp_path):
    """The issue's case word for word: save in one process, load_expanded in another."""
    model = fresh("gpt2")
    wide = expand(model, 2, "grouped", pairs=find_ffn_pairs(model), seed=0).eval()
    with torch.no_grad():
        torch.save({"masked": wide.state_dict(), "packed": pack(wide).state_dict(), "logits": wide(ids()).logits},
                   tmp_path / "saved.pt")
    script = textwrap.dedent(f"""
        import torch, transformers
        from torchfpe import load_expanded
        saved = torch.load({str(tmp_path / 'saved.pt')!r})
        config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                         bos_token_id=None, eos_token_id=None)
        x = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))
        for layout in ("masked", "packed"):
            model = load_expanded(transformers.GPT2LMHeadModel(config), saved[layout]).eval()
            with torch.no_grad():
                torch.testing.assert_close(model(x).logits, saved["logits"])
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]


def tiny_t5(gated: bool):
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=50, d_model=16, d_ff=24, num_layers=1, num_decoder_layers=1,
                                   num_heads=2, d_kv=8, feed_forward_proj="gated-gelu" if gated else "relu",
                                   decoder_start_token_id=0)
    return transformers.T5Model(config).eval()


def t5_forward(model):
    return model(input_ids=ids(), decoder_input_ids=ids()).last_hidden_state


@pytest.mark.parametrize("gated", [False, True], ids=["relu", "gated"])
@pytest.mark.parametrize("layout", ["auto", "ell", "block"])
def test_packed_t5_runs_like_the_masked_model(gated, layout):
    """T5 reads wo.weight.dtype in its forward pass; a packed wo must answer it."""
    model = tiny_t5(gated)
    pairs = find_ffn_pairs(model)
    split = "grouped" if layout == "block" else "random"
    wide = expand(model, 2, split, pairs=pairs, seed=0).eval()
    packed = pack(wide, layout=layout)
    assert packed.encoder.block[0].layer[1].DenseReluDense.wo.weight.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(t5_forward(packed), t5_forward(wide), rtol=1e-4, atol=1e-5)


def test_distilbert_ffn_found_and_expanded():
    torch.manual_seed(0)
    model = transformers.DistilBertModel(transformers.DistilBertConfig(vocab_size=50, dim=16, hidden_dim=24, n_layers=2,
                                                                       n_heads=2, max_position_embeddings=16))
    pairs = find_ffn_pairs(model)
    assert pairs == [(f"transformer.layer.{i}.ffn.lin1", f"transformer.layer.{i}.ffn.lin2") for i in range(2)]
    wide = expand(model, 2, pairs=pairs, seed=0)
    assert torchfpe.trainable_positions(wide) == torchfpe.trainable_positions(model)  # biases start at 0
    assert wide.transformer.layer[0].ffn.lin1.out_features == 48
    assert torch.isfinite(wide(ids()).last_hidden_state).all()


def test_gated_t5_ffn_found_as_a_gated_triple():
    model = tiny_t5(gated=True)
    pairs = find_ffn_pairs(model)
    block = "encoder.block.0.layer.1.DenseReluDense"
    assert (f"{block}.wi_0", f"{block}.wi_1", f"{block}.wo") in pairs and len(pairs) == 2  # encoder + decoder
    wide = expand(model, 2, pairs=pairs, seed=0, budget="outgoing")  # prunes only wo: the child masks stay whole
    ffn = wide.encoder.block[0].layer[1].DenseReluDense
    assert torch.equal(ffn.wi_0.weight_mask, ffn.wi_1.weight_mask)  # one child structure for gate and up
    assert torchfpe.nonzero_parameters(wide) == torchfpe.nonzero_parameters(model)


def test_mixtral_fused_experts_refused_by_name():
    config = transformers.MixtralConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2, num_local_experts=2,
                                        num_experts_per_tok=1)
    model = transformers.MixtralForCausalLM(config)
    with pytest.raises(InvalidParameterError, match=r"model\.layers\.0\.mlp\.experts.*MixtralExperts.*3-D"):
        find_ffn_pairs(model)
    assert find_ffn_pairs(model, target_modules=["q_proj"]) == []  # experts not asked for: nothing to refuse


@pytest.mark.parametrize("model", [torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)),
                                   torch.nn.Linear(3, 3)], ids=["sequential", "module"])
def test_empty_pairs_says_no_pair_was_given(model):
    with pytest.raises(InvalidParameterError, match=r"pairs=\[\].*no pair.*find_ffn_pairs"):
        expand(model, 2, pairs=[])
