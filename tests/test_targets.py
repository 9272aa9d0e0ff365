"""Transformer FFNs from Hugging Face transformers (tiny random configs, no download).

For each block shape: the non-zero count equals the parent's, the children's incoming weights
partition the parent's (gated: the same partition in both incoming layers), and the model still
runs and trains with its masks fixed.
"""

import pytest
import torch

import torchfpe
from torchfpe import MaskedLinear, expand, find_ffn_pairs, nonzero_parameters, trainable_positions

transformers = pytest.importorskip("transformers")
ALPHA = 2


def tiny_bert():
    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=24, max_position_embeddings=16)
    return transformers.BertModel(config)


def tiny_gpt2():
    config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    return transformers.GPT2LMHeadModel(config)


def tiny_llama():
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    return transformers.LlamaForCausalLM(config)


def weight_as_linear(module):
    """(out, in) weight of a Linear or a GPT-2 Conv1D parent."""
    return module.weight.detach() if isinstance(module, torch.nn.Linear) else module.weight.detach().t()


def assert_children_partition(parent_layer, child_layer):
    parent = weight_as_linear(parent_layer)
    mask = child_layer.weight_mask.reshape(parent.shape[0], ALPHA, parent.shape[1])
    assert torch.equal(mask.sum(dim=1), torch.ones_like(parent, dtype=torch.long)), "children must partition inputs"
    children = child_layer.weight.detach().reshape(parent.shape[0], ALPHA, parent.shape[1])
    torch.testing.assert_close(children.sum(dim=1), parent)
    return mask


def trains(model, loss_of):
    torch.manual_seed(0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2, weight_decay=1e-2)
    masked = [m for m in model.modules() if isinstance(m, MaskedLinear)]
    start = [m.weight.detach().clone() for m in masked]
    for _ in range(3):
        optimizer.zero_grad()
        loss = loss_of(model)
        loss.backward()
        optimizer.step()
    assert torch.isfinite(loss_of(model))
    assert masked, "the model should hold expanded layers"
    for module, before in zip(masked, start):
        assert not torch.equal(module.weight.detach(), before), "expanded layers must train"
        assert not module.weight.detach()[~module.weight_mask].any(), "masked entries must stay exactly zero"


def ids():
    return torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))


def test_bert_linear_act_linear_pairs_found_and_expanded():
    torch.manual_seed(0)
    model = tiny_bert().eval()
    pairs = find_ffn_pairs(model)
    assert pairs == [(f"encoder.layer.{i}.intermediate.dense", f"encoder.layer.{i}.output.dense") for i in range(2)]
    wide = expand(model, ALPHA, pairs=pairs, seed=0)
    assert trainable_positions(wide) == trainable_positions(model)  # BERT's biases start at 0: positions, not values
    out = wide(ids()).last_hidden_state
    assert out.shape == (2, 8, 16) and torch.isfinite(out).all()
    trains(wide.train(), lambda m: m(ids()).last_hidden_state.square().mean())


def test_bert_budget_outgoing_keeps_an_exact_partition():
    torch.manual_seed(0)
    model = tiny_bert().eval()
    wide = expand(model, ALPHA, pairs=find_ffn_pairs(model), seed=0, budget="outgoing")
    assert trainable_positions(wide) == trainable_positions(model)
    for i in range(2):
        name = f"encoder.layer.{i}.intermediate.dense"
        assert_children_partition(model.get_submodule(name), wide.get_submodule(name))


def test_gpt2_conv1d_is_read_transposed_and_replaced_by_masked_linear():
    torch.manual_seed(0)
    model = tiny_gpt2().eval()
    pairs = find_ffn_pairs(model)
    assert pairs == [(f"transformer.h.{i}.mlp.c_fc", f"transformer.h.{i}.mlp.c_proj") for i in range(2)]
    assert find_ffn_pairs(model, target_modules=r"transformer\.h\.1\..*") == pairs[1:]
    wide, report = expand(model, ALPHA, pairs=pairs, seed=0, budget="outgoing", return_report=True)
    assert report.excess == 0 and trainable_positions(wide) == trainable_positions(model)
    fc = wide.get_submodule("transformer.h.0.mlp.c_fc")
    assert isinstance(fc, MaskedLinear) and fc.weight.shape == (2 * 64, 16)
    assert_children_partition(model.get_submodule("transformer.h.0.mlp.c_fc"), fc)
    # the parent is untouched (still Conv1D) and the tied embedding / lm_head stays tied
    assert type(model.get_submodule("transformer.h.0.mlp.c_fc")).__name__ == "Conv1D"
    assert wide.lm_head.weight is wide.transformer.wte.weight
    logits = wide(ids()).logits
    assert logits.shape == (2, 8, 50) and torch.isfinite(logits).all()
    trains(wide.train(), lambda m: m(ids(), labels=ids()).loss)


def test_gpt2_expansion_before_training_matches_a_hand_expansion_of_one_block():
    """Child k of unit i computes the parent's pre-activation restricted to its inputs (Conv1D read right)."""
    torch.manual_seed(0)
    model = tiny_gpt2().eval()
    wide = expand(model, ALPHA, pairs=find_ffn_pairs(model), seed=0, budget="none")
    x = torch.randn(3, 16)
    parent = model.get_submodule("transformer.h.0.mlp.c_fc")
    child = wide.get_submodule("transformer.h.0.mlp.c_fc")
    summed = child(x).reshape(3, 64, ALPHA).sum(-1) - (ALPHA - 1) * parent.bias
    torch.testing.assert_close(summed, parent(x), rtol=1e-5, atol=1e-5)


def test_llama_gated_mlp_split_together():
    torch.manual_seed(0)
    model = tiny_llama().eval()
    pairs = find_ffn_pairs(model)
    assert pairs == [tuple(f"model.layers.{i}.mlp.{n}" for n in ("gate_proj", "up_proj", "down_proj"))
                     for i in range(2)]
    wide = expand(model, ALPHA, pairs=pairs, seed=0, budget="outgoing")
    assert trainable_positions(wide) == trainable_positions(model)
    for i in range(2):
        prefix = f"model.layers.{i}.mlp"
        gate = assert_children_partition(model.get_submodule(f"{prefix}.gate_proj"), wide.get_submodule(f"{prefix}.gate_proj"))
        up = assert_children_partition(model.get_submodule(f"{prefix}.up_proj"), wide.get_submodule(f"{prefix}.up_proj"))
        assert torch.equal(gate, up), "gate and up must share one child structure"
        assert wide.get_submodule(f"{prefix}.down_proj").weight.shape == (16, 2 * 24)
    logits = wide(ids()).logits
    assert logits.shape == (2, 8, 50) and torch.isfinite(logits).all()
    trains(wide.train(), lambda m: m(ids(), labels=ids()).loss)


def test_gated_global_budget_is_exact_and_masks_stay_shared_where_kept():
    torch.manual_seed(0)
    model = tiny_llama().eval()
    wide = expand(model, 4, pairs=find_ffn_pairs(model, target_modules=["layers.0.mlp.up_proj"]), seed=0)
    assert nonzero_parameters(wide) == nonzero_parameters(model)
    assert isinstance(wide.get_submodule("model.layers.0.mlp.gate_proj"), MaskedLinear)
    assert not isinstance(wide.get_submodule("model.layers.1.mlp.gate_proj"), MaskedLinear)
    gate = wide.get_submodule("model.layers.0.mlp.gate_proj").weight_mask
    up = wide.get_submodule("model.layers.0.mlp.up_proj").weight_mask
    # pruning may remove entries from either layer, but never gives a child an input outside its share
    shared = torch.zeros(24, 4, 16, dtype=torch.bool)
    shared |= gate.reshape(24, 4, 16) | up.reshape(24, 4, 16)
    assert int(shared.sum(dim=1).max()) == 1


def test_core_does_not_import_transformers():
    import subprocess
    import sys

    code = "import sys, torchfpe; torchfpe.find_ffn_pairs; print('transformers' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
    assert torchfpe.find_ffn_pairs is find_ffn_pairs
