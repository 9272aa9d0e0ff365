"""``FPEConfig``, ``save_pretrained`` and ``from_pretrained``: a directory rebuilds the wide model alone.

Hugging Face models are tiny random configs (no download, HF_HUB_OFFLINE=1); the "fresh process"
checks run ``from_pretrained`` in a subprocess that has only the directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import torchfpe
from torchfpe import FPEConfig, InvalidParameterError, expand, from_pretrained, pack, save_pretrained
from torchfpe.core import expanded_layers
from helpers import mlp as _mlp

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SRC = Path(__file__).resolve().parents[1] / "src"


def mlp(seed=0):
    return _mlp([12, 8, 6, 3], seed, torch.float64)


def layouts(model):
    return [layer.layout for _, layer in expanded_layers(model)]


# ------------------------------------------------------------------------------------ FPEConfig
def test_expand_records_a_config_that_round_trips_to_json_and_redoes_the_expansion():
    wide, report = expand(mlp(), 2, "contiguous", seed=3, budget="layerwise", layers=["0", "2"], return_report=True)
    config = wide.fpe_config
    assert config is report.config and config.alpha == 2 and config.split == "contiguous" and config.seed == 3
    again = FPEConfig.from_json(config.to_json())
    assert again == config
    for redone in (expand(mlp(seed=0), **again.expand_kwargs()), expand(mlp(seed=0), config=again)):
        assert all(torch.equal(a, b) for a, b in zip(redone.state_dict().values(), wide.state_dict().values()))


def test_a_drawn_seed_is_recorded_so_the_config_reproduces_it():
    wide = expand(mlp(), 2)
    assert isinstance(wide.fpe_config.seed, int)
    redone = expand(mlp(), config=wide.fpe_config)
    assert torch.equal(redone[0].weight_mask, wide[0].weight_mask)


def test_expand_refuses_config_beside_an_argument_and_no_alpha():
    config = expand(mlp(), 2, seed=0).fpe_config
    with pytest.raises(InvalidParameterError, match="expand got config and 'alpha'"):
        expand(mlp(), 2, config=config)
    with pytest.raises(InvalidParameterError, match="expand needs alpha"):
        expand(mlp())


def test_a_config_with_an_unknown_key_is_refused_naming_it():
    with pytest.raises(InvalidParameterError, match="fpe_config holds unknown key 'alhpa'"):
        FPEConfig.from_dict({"alpha": 2, "alhpa": 2})


def test_a_tensor_split_is_recorded_but_not_redone():
    wide = expand(mlp(), 2, torch.arange(12) % 2, seed=0, layers=["0"])
    assert wide.fpe_config.split == "assignment"
    with pytest.raises(InvalidParameterError, match="'split' is 'assignment'"):
        wide.fpe_config.expand_kwargs()


# ------------------------------------------------------------------------------- plain torch models
@pytest.mark.parametrize("layout", [None, "auto", "ell"])
def test_a_plain_model_round_trips_with_its_parent_given(layout, tmp_path):
    wide = expand(mlp(), 2, "random", seed=0)
    if layout is not None:
        wide = pack(wide, layout)
    written = save_pretrained(wide, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    block = json.loads((tmp_path / "config.json").read_text())["fpe_config"]
    assert block == written.to_dict() and block["alpha"] == 2 and block["widths"]["0"] == [12, 16]
    loaded = from_pretrained(tmp_path, parent=mlp(seed=5))
    assert layouts(loaded) == layouts(wide) and loaded.fpe_config == written
    x = torch.randn(4, 12, dtype=torch.float64)
    assert torch.equal(loaded(x), wide.eval()(x))


def test_a_plain_model_needs_its_parent_and_a_wrong_parent_is_refused(tmp_path):
    save_pretrained(expand(mlp(), 2, seed=0), tmp_path)
    with pytest.raises(InvalidParameterError, match="parent=<the model before expand>"):
        from_pretrained(tmp_path)
    with pytest.raises(InvalidParameterError, match="layer '0'"):
        from_pretrained(tmp_path, parent=_mlp([10, 8, 6, 3]))


def test_a_config_that_disagrees_with_the_weights_is_refused(tmp_path):
    save_pretrained(expand(mlp(), 2, seed=0), tmp_path)
    whole = json.loads((tmp_path / "config.json").read_text())
    whole["fpe_config"]["layer_nonzero"]["0"] += 1
    (tmp_path / "config.json").write_text(json.dumps(whole))
    with pytest.raises(InvalidParameterError, match="records \\d+ non-zero weights in layer '0'"):
        from_pretrained(tmp_path, parent=mlp())


def test_import_torchfpe_loads_neither_transformers_nor_safetensors():
    code = "import sys, torchfpe; print(sorted({'transformers', 'safetensors'} & {m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)}).stdout
    assert out.strip() == "[]"


# ----------------------------------------------------------------------------- Hugging Face models
transformers = pytest.importorskip("transformers")


def tiny(kind: str, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=2, n_head=2,
                                         bos_token_id=None, eos_token_id=None)
        return transformers.GPT2LMHeadModel(config).eval()
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=16)
    return transformers.LlamaForCausalLM(config).eval()


def ids():
    return torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))


def test_hugging_face_models_rebuild_from_their_directories_in_a_fresh_process(tmp_path):
    """GPT-2 (Conv1D parents) and LLaMA (gated FFN), masked and packed: one subprocess loads all four."""
    expected = {}
    for kind in ("gpt2", "llama"):
        for packed in (False, True):
            parent = tiny(kind)
            wide = expand(parent, 2, "random", pairs=torchfpe.find_ffn_pairs(parent), seed=0)
            wide = (pack(wide) if packed else wide).eval()
            directory = tmp_path / f"{kind}-{'packed' if packed else 'masked'}"
            wide.save_pretrained(tmp_path / "own")  # the model's own save_pretrained works after expansion
            assert (tmp_path / "own" / "model.safetensors").is_file()
            save_pretrained(wide, directory)
            block = json.loads((directory / "config.json").read_text())["fpe_config"]
            assert block["alpha"] == 2 and block["pairs"]
            assert block["layout"] != "masked" if packed else block["layout"] == "masked"
            with torch.no_grad():
                torch.save(wide(ids()).logits, directory / "logits.pt")
            expected[directory.name] = f"{type(wide).__name__} {layouts(wide)}"
    script = textwrap.dedent(f"""
        import pathlib, torch
        import torchfpe
        x = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(1))
        for name in {sorted(expected)!r}:
            directory = pathlib.Path({str(tmp_path)!r}) / name
            model = torchfpe.from_pretrained(directory)
            with torch.no_grad():
                assert torch.equal(model(x).logits, torch.load(directory / "logits.pt")), name
            print(name, type(model).__name__, [layer.layout for _, layer in torchfpe.core.expanded_layers(model)])
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    found = dict(line.split(" ", 1) for line in done.stdout.strip().splitlines())
    assert found == expected


def test_a_trainer_checkpoint_of_a_packed_model_saves_and_resumes(tmp_path):
    """Trainer writes checkpoints with safetensors (a dict in the state_dict made it fail) and resumes from them."""
    pytest.importorskip("accelerate")
    parent = tiny("gpt2")
    wide = pack(expand(parent, 2, "random", pairs=torchfpe.find_ffn_pairs(parent), seed=0)).train()
    data = [{"input_ids": row, "labels": row} for row in torch.randint(0, 50, (8, 8), generator=torch.Generator().manual_seed(2))]
    arguments = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=2, save_steps=1, per_device_train_batch_size=4,
                                               report_to=[], use_cpu=True, save_only_model=False, disable_tqdm=True)
    transformers.Trainer(model=wide, args=arguments, train_dataset=data).train()
    checkpoint = tmp_path / "checkpoint-1"
    assert (checkpoint / "model.safetensors").is_file()
    count = torchfpe.nonzero_parameters(wide)
    resumed = pack(expand(tiny("gpt2"), 2, "random", pairs=torchfpe.find_ffn_pairs(parent), seed=0))
    transformers.Trainer(model=resumed, args=arguments, train_dataset=data).train(resume_from_checkpoint=str(checkpoint))
    assert torchfpe.nonzero_parameters(resumed) == count
    assert all(torch.equal(a, b) for a, b in zip(resumed.state_dict().values(), wide.state_dict().values()))


def test_a_directory_written_by_the_models_own_save_pretrained_loads_too(tmp_path):
    parent = tiny("llama")
    wide = pack(expand(parent, 2, "random", pairs=torchfpe.find_ffn_pairs(parent), seed=0)).eval()
    wide.save_pretrained(tmp_path)
    assert "fpe_config" not in json.loads((tmp_path / "config.json").read_text())
    loaded = from_pretrained(tmp_path)
    assert layouts(loaded) == layouts(wide) and loaded.fpe_config.alpha == 2
    with torch.no_grad():
        assert torch.equal(loaded(ids()).logits, wide(ids()).logits)
    tiny("llama").save_pretrained(tmp_path / "dense")
    with pytest.raises(InvalidParameterError, match="no expanded layer"):
        from_pretrained(tmp_path / "dense")
