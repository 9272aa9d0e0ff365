"""Byte-level decoder-only language models: dense vs FPE of every feed-forward block at the same non-zero count.

The models are Hugging Face ``transformers`` models built from small configs (no download):
``arch="gpt2"`` (``GPT2LMHeadModel``: a GELU MLP in ``Conv1D`` layers, ``c_fc → c_proj``) or
``arch="llama"`` (``LlamaForCausalLM``: a gated SiLU MLP, ``gate_proj``/``up_proj → down_proj``, no
biases), over 256 byte symbols, input and output embeddings tied. ``expand`` widens every FFN found
by :func:`torchfpe.find_ffn_pairs`; attention, embeddings and norms are untouched.

The protocol is the paper's two-phase one (:mod:`torchfpe.lab.experiments.protocol`), counted in
optimizer steps: ``warmup_steps`` dense steps (T1), then the split, then ``steps_after`` steps (T2);
dense trains T1 + T2 with one optimizer. A step is one minibatch of ``batch_size`` windows of
``context + 1`` bytes drawn uniformly from the training text (the seed fixes the draws, the
initialisation and the split). The metric is ``bits_per_byte`` (cross-entropy in bits per predicted
byte) on the test part; ``relative_gain`` is (dense − variant) / dense, so positive is better.
Also recorded: ``val_bits_per_byte``, ``train_bits_per_byte``, and the FFNs' non-zero counts
(``ffn_in_nonzero``: the incoming layers, gate and up for LLaMA; ``ffn_out_nonzero``: the outgoing
ones; ``ffn_layer_nonzero``: every FFN layer by name), which show where a budget pruned.

Variants: every split of the registry with modifiers (``random@structured``, ``random@carry``; see
the protocol), ``static_sparse`` at the expanded width and ``wide<s>``, a dense model whose FFN
width gives about ``s`` times the FFNs' non-zero count (the rest of the model is the same).

Defaults and why (each a config field, overridable with ``--set``), chosen so that the default study
(``width``, 3 seeds) finishes within 15 minutes on 2 CPU cores:

- data: the King James Bible (Debian package ``bible-kjv``; :mod:`torchfpe.data.text`), or
  ``data_dir`` (``--data FILE|DIR``) for your own UTF-8 text; first 90 % train, next 5 %
  validation, last 5 % test. ``eval_bytes=32768``: each part is scored on this many bytes, in
  windows of ``context`` spread evenly over the part (``None``: every window of the part);
- model: ``d_model=64``, 2 layers, 2 heads, ``d_ff=256`` (GPT-2's 4 × d_model), ``context=64``;
- training: Adam at lr 2e-3, 32 windows per step, gradients clipped to norm 1, 300 + 300 steps.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ...core import find_ffn_pairs
from ...core.validation import Interval, Options, invalid
from ..kinds import RecordField, register_task_kind
from ..train import make_optimizer
from . import protocol
from .studies import Study

ARCHS = ("gpt2", "llama")
VOCAB = 256  # bytes
MAX_CONTEXT = 1 << 14
MAX_WIDTH = 1 << 16
EVAL_WINDOWS = 64  # windows per forward pass when scoring


# ------------------------------------------------------------------------------------------ models
def _transformers():
    import transformers  # the optional extra (pip install 'torchfpe[lm]')

    transformers.logging.set_verbosity_error()  # no notes about generation settings of a fresh model
    return transformers


def build_lm(arch: str, d_model: int, layers: int, heads: int, d_ff: int, context: int, seed: int,
             dtype: str = "float32") -> nn.Module:
    """A freshly initialised byte-level causal LM, seeded by ``seed`` (torch's global generator is restored)."""
    transformers = _transformers()
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        common = dict(vocab_size=VOCAB, use_cache=False, bos_token_id=None, eos_token_id=None, pad_token_id=None,
                      tie_word_embeddings=True)
        if arch == "gpt2":
            config = transformers.GPT2Config(n_positions=context, n_embd=d_model, n_layer=layers, n_head=heads,
                                             n_inner=d_ff, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **common)
            model = transformers.GPT2LMHeadModel(config)
        else:
            config = transformers.LlamaConfig(hidden_size=d_model, intermediate_size=d_ff, num_hidden_layers=layers,
                                              num_attention_heads=heads, num_key_value_heads=heads,
                                              max_position_embeddings=context, attention_dropout=0.0, **common)
            model = transformers.LlamaForCausalLM(config)
    finally:
        torch.random.set_rng_state(state)
    return model.to(protocol.DTYPES[dtype])


@functools.lru_cache(maxsize=8)
def ffn_pairs(arch: str, layers: int) -> tuple[tuple[str, ...], ...]:
    """The FFN blocks ``expand`` widens, as :func:`torchfpe.find_ffn_pairs` names them (they depend on the
    architecture and the depth only, so a tiny model of that depth finds them)."""
    return tuple(find_ffn_pairs(build_lm(arch, 8, layers, 2, 8, 8, seed=0)))


def ffn_nonzero(config: "LMConfig", model: nn.Module) -> dict:
    """The FFN layers' non-zero counts (weights and biases): incoming, outgoing, and each layer by name."""
    counts = {}
    for entry in ffn_pairs(config.arch, config.layers):
        for name in entry:
            counts[name] = sum(int(torch.count_nonzero(p.detach()))
                               for p in model.get_submodule(name).parameters(recurse=False))
    incoming = sum(counts[name] for entry in ffn_pairs(config.arch, config.layers) for name in entry[:-1])
    outgoing = sum(counts[entry[-1]] for entry in ffn_pairs(config.arch, config.layers))
    return {"ffn_in_nonzero": incoming, "ffn_out_nonzero": outgoing, "ffn_nonzero": incoming + outgoing,
            "ffn_layer_nonzero": " ".join(f"{name}={count}" for name, count in counts.items())}


def ffn_units(config: "LMConfig", model: nn.Module) -> int:
    """Hidden units of the first FFN (every block has the same)."""
    first = model.get_submodule(ffn_pairs(config.arch, config.layers)[0][0])
    return int(getattr(first, "out_features", None) or first.weight.shape[1])  # Conv1D stores (in, out)


def wide_width(scale: float, config: "LMConfig") -> int:
    """The FFN width whose dense FFNs hold about ``scale`` times the non-zeros of width ``d_ff``."""
    def count(width: int) -> int:  # one block; GPT-2 has biases, LLaMA three matrices without
        if config.arch == "gpt2":
            return 2 * config.d_model * width + width + config.d_model
        return 3 * config.d_model * width

    target = scale * count(config.d_ff)
    return min(range(1, 64 * config.d_ff + 2), key=lambda w: (abs(count(w) - target), w))


# ------------------------------------------------------------------------------------ train, score
def windows_loss(model: nn.Module, windows: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy (nats) of predicting each window's bytes 1..T from the bytes before them."""
    logits = model(input_ids=windows[:, :-1]).logits
    return F.cross_entropy(logits.reshape(-1, VOCAB).float(), windows[:, 1:].reshape(-1), reduction=reduction)


@torch.no_grad()
def bits_per_byte(model: nn.Module, stream: torch.Tensor, context: int, eval_bytes: int | None,
                  device="cpu") -> float:
    """Mean bits per predicted byte over windows of ``context + 1`` bytes spread evenly over ``stream``
    (about ``eval_bytes`` predicted bytes; None: every non-overlapping window)."""
    room = len(stream) - context - 1
    count = room // context + 1 if eval_bytes is None else max(1, min(room // context + 1, eval_bytes // context))
    starts = torch.linspace(0, room, count).round().long()
    positions = torch.arange(context + 1)
    was_training = model.training
    model.eval()
    total = 0.0
    for chunk in starts.split(EVAL_WINDOWS):
        windows = stream[chunk[:, None] + positions].long().to(device)
        total += float(windows_loss(model, windows, reduction="sum"))
    model.train(was_training)
    return total / (count * context) / math.log(2)


#: Next-byte prediction: the task trains and measures its models itself (windows of bytes); the kind
#: declares what it measures, bits per byte on the test, validation and training parts (lower is better).
NEXT_BYTE = register_task_kind(
    "next_byte", fields=[RecordField(name, higher_is_better=False)
                         for name in ("bits_per_byte", "val_bits_per_byte", "train_bits_per_byte")],
    metric="bits_per_byte", description="byte-level language modelling: cross-entropy in bits per byte")


class LMTask(protocol.Task):
    """Byte-level next-byte prediction. ``Data``: ``x_train`` and ``x_test`` are the training and test
    bytes, ``info`` the :class:`~torchfpe.data.text.TextSplits` (with the validation part)."""

    kind = NEXT_BYTE.name

    def data(self, config: "LMConfig") -> protocol.Data:
        text = _text(config)
        return protocol.Data(text.train, None, text.test, None, info=text)

    def check(self, config: "LMConfig") -> None:
        """transformers importable; the corpus there, UTF-8, and each part longer than one window."""
        _transformers()
        text = _text(config)
        parts = {"training": len(text.train), "validation": len(text.val), "test": len(text.test)}
        short = min(parts, key=parts.get)
        if parts[short] < config.context + 2:
            from ...data.text import TextError

            raise TextError(f"{text.source}: {text.total} bytes of text are too short for context={config.context}: "
                            f"its {short} part ({parts[short]} bytes; 90/5/5 % train/validation/test) must hold a "
                            f"window of context + 1 = {config.context + 1} bytes and one to predict; use a longer "
                            "text or a smaller context")

    def parent(self, config: "LMConfig") -> nn.Module:
        return self._build(config, config.d_ff)

    def wide_parent(self, config: "LMConfig", scale: float) -> nn.Module:
        return self._build(config, wide_width(scale, config))

    def _build(self, config: "LMConfig", d_ff: int) -> nn.Module:
        model = build_lm(config.arch, config.d_model, config.layers, config.heads, d_ff, config.context, config.seed,
                         config.dtype)
        return model

    def expand_kwargs(self, config: "LMConfig", split: str, data: protocol.Data) -> dict:
        return {"pairs": [list(entry) for entry in ffn_pairs(config.arch, config.layers)]}

    def train(self, model, config: "LMConfig", data, length, generator, optimizer=None):
        """``length`` optimizer steps on random windows of the training bytes."""
        parameters = [p for p in model.parameters() if p.requires_grad]
        optimizer = optimizer or make_optimizer(parameters, config.settings())
        stream, device = data.x_train, _device(model)
        positions = torch.arange(config.context + 1)
        model.train()
        for _ in range(length):
            starts = torch.randint(0, len(stream) - config.context, (config.batch_size,), generator=generator)
            loss = windows_loss(model, stream[starts[:, None] + positions].long().to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(parameters, config.grad_clip)
            optimizer.step()
        return optimizer

    def evaluate(self, model, config: "LMConfig", data) -> dict:
        def score(stream):
            return bits_per_byte(model, stream, config.context, config.eval_bytes, _device(model))

        return {"bits_per_byte": score(data.x_test), "val_bits_per_byte": score(data.info.val),
                "train_bits_per_byte": score(data.x_train)}

    def record_extras(self, config: "LMConfig", variant: str, model: nn.Module, data: protocol.Data) -> dict:
        return {"dataset": data.info.name, "standin": False, "hidden_units": ffn_units(config, model),
                **ffn_nonzero(config, model)}


def _text(config: "LMConfig"):
    from ...data.text import load_text

    return load_text(config.data_dir)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device  # where the protocol put the model (--device)


TASK = LMTask()


# ------------------------------------------------------------------------------------------ the config
@dataclass(frozen=True)
class LMConfig(protocol.ProtocolBase):
    """One run of a byte-level LM. Defaults: see the module docstring for why."""

    # data
    data_dir: str | None = None  # --data: a UTF-8 text file or a folder of *.txt files; None: the King James Bible
    eval_bytes: int | None = 32768  # bytes scored per part (windows spread evenly); None: every window
    # model
    arch: str = "gpt2"
    d_model: int = 64
    layers: int = 2
    heads: int = 2
    d_ff: int = 256
    context: int = 64
    # training, in optimizer steps
    lr: float = 2e-3
    batch_size: int = 32  # windows per step
    warmup_steps: int = 300  # T1: dense steps before the split
    steps_after: int = 300  # T2: steps after it
    grad_clip: float | None = 1.0  # gradient norm clipped to this; None: no clipping
    variants: tuple[str, ...] = ("dense", "random", "grouped")

    task: ClassVar[protocol.Task] = TASK
    phase_fields: ClassVar[tuple[str, str]] = ("warmup_steps", "steps_after")

    def constraints(self) -> dict:
        return {
            "data_dir": [str, None], "eval_bytes": [Interval(int, 1), None], "arch": [Options(ARCHS)],
            "d_model": [Interval(int, 2, MAX_WIDTH)], "layers": [Interval(int, 1, 256)],
            "heads": [Interval(int, 1, 1024)], "d_ff": [Interval(int, 1, MAX_WIDTH)],
            "context": [Interval(int, 1, MAX_CONTEXT)], "grad_clip": [Interval(float, 0.0, None, closed="neither"), None],
            **super().constraints(), "batch_size": [Interval(int, 1)],
        }

    def check(self) -> None:
        owner = type(self).__name__
        if self.d_model % self.heads:
            raise invalid("heads", owner, f"a divisor of d_model={self.d_model}", self.heads)
        if self.arch == "llama" and (self.d_model // self.heads) % 2:
            raise invalid("heads", owner, f"a divisor of d_model={self.d_model} leaving an even head size (LLaMA's "
                          "rotary embeddings rotate pairs)", self.heads)

    def alpha_limit(self) -> tuple[int, str, str]:
        return self.d_model, f"d_model={self.d_model}", "the FFN's fan-in"


# ------------------------------------------------------------------------------------------ studies
def lm_meta(page: str) -> dict:
    """What an LM study's report needs: its page, the data note, and the metric (lower bits/byte is better)."""
    return {"page": page, "metric": NEXT_BYTE.report_metric("test bits/byte"),
            "dataset_note": "byte-level UTF-8 text, by default the King James Bible from the Debian package bible-kjv, "
                            "else the --data FILE|DIR the data set's name in each table gives; the first 90 % trains, "
                            "the next 5 % validates, the last 5 % tests (contiguous parts)"}


WIDTH_VARIANTS = "dense+random+grouped+static_sparse+random@carry"
STUDIES = (
    Study("width", "lm", "byte-level GPT-2 on the King James Bible: FFN width from narrow to wide at d_model = 64 "
          "(does FPE's gain grow with the load per neuron?), FPE random and grouped, the static-sparse control and "
          "FPE with the warm-up optimizer carried", {"d_ff": (16, 64, 256)}, {"variants": WIDTH_VARIANTS},
          default_seeds=3, group="lm", meta=lm_meta("cells")),
    Study("budget", "lm", "the non-zero budget on FFNs, whose outgoing layer is as wide as the incoming one: global, "
          "outgoing (only the copied outgoing weights are pruned) and structured (each child keeps a disjoint share "
          "of its parent's outgoing weights)", {"d_ff": (16, 64, 256)},
          {"variants": "dense+random+random@outgoing+random@structured+grouped+grouped@structured"},
          default_seeds=3, group="lm", meta=lm_meta("cells")),
    Study("match", "lm", "how much wider must dense be: dense FFNs at 1.5×, 2×, 3× the FFN non-zeros vs FPE",
          {"d_ff": (16, 64, 256)}, {"variants": "dense+random+grouped+wide1.5+wide2+wide3"}, default_seeds=3, group="lm",
          meta=lm_meta("match")),
)

EXPERIMENT = protocol.register("lm", LMConfig, STUDIES)
