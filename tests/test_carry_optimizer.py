"""carry_optimizer: the optimizer's state follows the weights into the expanded model, and masks keep holding."""

import pytest
import torch
from torch import nn

import torchfpe
from torchfpe import InvalidParameterError, carry_optimizer, expand

ALPHA = 2


def mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))


def trained(model, optimizer, steps=3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, model[0].in_features, generator=generator)
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
    return optimizer


BUILDERS = {  # hyperparameters away from the defaults, one per carried optimizer of the registry
    "adam": lambda params: torch.optim.Adam(params, lr=1e-2, betas=(0.8, 0.9)),
    "adamw": lambda params: torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1),
    "sgd": lambda params: torch.optim.SGD(params, lr=1e-2, momentum=0.9, weight_decay=0.01),
}


@pytest.mark.parametrize("name", list(BUILDERS))
def test_state_is_the_parents_repeated_under_the_mask(name):
    parent = mlp()
    optimizer = trained(parent, BUILDERS[name](parent.parameters()))
    wide = expand(parent, ALPHA, seed=0)
    carried = carry_optimizer(optimizer, parent, wide)
    assert type(carried) is type(optimizer)
    assert carried.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    for key in ("betas", "weight_decay", "momentum"):
        assert carried.param_groups[0].get(key) == optimizer.param_groups[0].get(key)
    incoming, outgoing = wide[0], wide[2]
    for key, old in optimizer.state[parent[0].weight].items():
        new = carried.state[incoming.weight][key]
        if key == "step":
            assert float(new) == float(old) == 3
            continue
        for unit in range(4):  # child k of unit i sits at ALPHA * i + k and gets the parent's row under its mask
            for k in range(ALPHA):
                row = ALPHA * unit + k
                torch.testing.assert_close(new[row], old[unit] * incoming.weight_mask[row])
        assert not new[~incoming.weight_mask].any(), "pruned and other children's entries get 0"
    for key, old in optimizer.state[parent[2].weight].items():
        if key == "step":
            continue
        new = carried.state[outgoing.weight][key]
        for column in range(8):  # every child's copy of the outgoing column gets its parent column's state
            torch.testing.assert_close(new[:, column], old[:, column // ALPHA] * outgoing.weight_mask[:, column])
    for key, old in optimizer.state[parent[0].bias].items():
        if key != "step":
            torch.testing.assert_close(carried.state[incoming.bias][key], old.repeat_interleave(ALPHA))
    for key, old in optimizer.state[parent[2].bias].items():  # an unsplit bias keeps its state as it is
        if key != "step":
            torch.testing.assert_close(carried.state[outgoing.bias][key], old)
            assert carried.state[outgoing.bias][key] is not old, "a copy, so the parent's optimizer is untouched"


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_masks_hold_after_many_steps_with_weight_decay_and_momentum(name):
    parent = mlp(1)
    optimizer = trained(parent, BUILDERS[name](parent.parameters()), steps=5)
    wide = expand(parent, ALPHA, seed=3)
    carried = trained(wide, carry_optimizer(optimizer, parent, wide), steps=60, seed=1)
    assert float(carried.state[wide[0].weight].get("step", torch.tensor(65.0))) == 65
    for layer in (wide[0], wide[2]):
        assert layer.masked_out_nonzero() == 0, "masked entries stay exactly 0"
    assert torchfpe.nonzero_parameters(wide) <= torchfpe.nonzero_parameters(parent)


def test_first_step_follows_the_carried_moments_not_a_fresh_start():
    """With the state carried, Adam's first step after expansion uses the parent's moments: an entry whose
    gradient is 0 at that step still moves (by the parent's momentum), which a fresh Adam would not do."""
    parent = mlp(2)
    optimizer = trained(parent, torch.optim.Adam(parent.parameters(), lr=1e-2))
    wide = expand(parent, ALPHA, seed=0, budget="none")
    carried = carry_optimizer(optimizer, parent, wide)
    before = wide[0].weight.detach().clone()
    carried.zero_grad()
    for p in wide.parameters():
        p.grad = torch.zeros_like(p)
    carried.step()
    state = carried.state[wide[0].weight]
    beta1, beta2 = 0.9, 0.999
    m, v = state["exp_avg"], state["exp_avg_sq"]  # after the step: beta * carried
    step = float(state["step"])
    expected = before - 1e-2 * (m / (1 - beta1 ** step)) / ((v / (1 - beta2 ** step)).sqrt() + 1e-8)
    torch.testing.assert_close(wide[0].weight.detach(), expected)
    assert not torch.equal(wide[0].weight.detach(), before)
    assert wide[0].masked_out_nonzero() == 0


def test_parameter_groups_and_a_frozen_layer_are_kept():
    parent = mlp()
    parent[2].bias.requires_grad_(False)
    optimizer = torch.optim.Adam([{"params": [parent[0].weight, parent[0].bias], "lr": 1e-3},
                                  {"params": [parent[2].weight], "lr": 5e-3}])
    trained(parent, optimizer)
    wide = expand(parent, ALPHA, seed=0)
    carried = carry_optimizer(optimizer, parent, wide)
    assert [g["lr"] for g in carried.param_groups] == [1e-3, 5e-3]
    assert carried.param_groups[0]["params"] == [wide[0].weight, wide[0].bias]
    assert carried.param_groups[1]["params"] == [wide[2].weight]


def test_gpt2_conv1d_state_is_read_transposed():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=20, n_positions=8, n_embd=8, n_layer=1, n_head=2, bos_token_id=None,
                                     eos_token_id=None)
    parent = transformers.GPT2LMHeadModel(config)
    optimizer = torch.optim.Adam(parent.parameters(), lr=1e-2)
    x = torch.randint(0, 20, (2, 8), generator=torch.Generator().manual_seed(0))
    for _ in range(2):
        optimizer.zero_grad()
        parent(x, labels=x).loss.backward()
        optimizer.step()
    wide = expand(parent, ALPHA, pairs=torchfpe.find_ffn_pairs(parent), seed=0, budget="outgoing")
    carried = carry_optimizer(optimizer, parent, wide)
    old = optimizer.state[parent.transformer.h[0].mlp.c_fc.weight]["exp_avg"]  # (in, out): Conv1D
    layer = wide.transformer.h[0].mlp.c_fc
    new = carried.state[layer.weight]["exp_avg"]  # (out, in)
    torch.testing.assert_close(new, old.t().repeat_interleave(ALPHA, 0) * layer.weight_mask)
    assert carried.state[wide.transformer.wte.weight]["exp_avg"].shape == (20, 8)  # tied embedding copied once
    optimizer_steps = trained_lm(wide, carried, x)
    assert wide.transformer.h[0].mlp.c_proj.masked_out_nonzero() == 0 and optimizer_steps == 4


def trained_lm(model, optimizer, x):
    for _ in range(2):
        optimizer.zero_grad()
        model(x, labels=x).loss.backward()
        optimizer.step()
    return int(optimizer.state[model.transformer.h[0].mlp.c_fc.weight]["step"])


def test_unsupported_optimizer_and_wrong_models_are_refused():
    parent = mlp()
    wide = expand(parent, ALPHA, seed=0)
    with pytest.raises(InvalidParameterError, match=r"registered with carried=True \(Adam, AdamW, SGD\).*RMSprop"):
        carry_optimizer(torch.optim.RMSprop(parent.parameters()), parent, wide)
    with pytest.raises(InvalidParameterError, match="not one of parent's parameters"):
        carry_optimizer(torch.optim.Adam(mlp(5).parameters()), parent, wide)
    with pytest.raises(InvalidParameterError, match="'0.weight' has shape"):
        carry_optimizer(torch.optim.Adam(parent.parameters()), parent, nn.Sequential(nn.Linear(7, 4), nn.ReLU(),
                                                                                  nn.Linear(4, 3)))
    with pytest.raises(InvalidParameterError, match="packed 'ell' layout.*before torchfpe.pack"):
        carry_optimizer(torch.optim.Adam(parent.parameters()), parent, torchfpe.pack(wide, "ell"))
    with pytest.raises(InvalidParameterError, match="optimizer"):
        carry_optimizer("adam", parent, wide)
