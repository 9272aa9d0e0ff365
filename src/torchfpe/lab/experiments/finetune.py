"""Fine-tuning a pretrained transformer: dense vs FPE of every feed-forward block at the same non-zero count.

The model is a pretrained BERT encoder (by default sentence-transformers' all-MiniLM-L6-v2, loaded
offline by :mod:`torchfpe.data.minilm`: 6 layers, hidden 384, FFN 1536, GELU) with a classification
head: the last hidden states mean-pooled over the real tokens, then one ``Linear`` to the classes
(initialised from the seed). ``expand`` widens the FFN of every chosen layer
(``intermediate.dense → output.dense``, found by :func:`torchfpe.find_ffn_pairs`); attention,
embeddings, norms and the head are untouched.

The protocol is the paper's two-phase one (:mod:`torchfpe.lab.experiments.protocol`), counted in
optimizer steps: ``warmup_steps`` dense fine-tuning steps (T1), the split, ``steps_after`` steps
(T2); dense fine-tunes T1 + T2 steps with one optimizer. A step is one minibatch of ``batch_size``
training texts drawn uniformly (the seed fixes the draws, the head, dropout, the train subset and
the split). Recorded: ``test_accuracy`` and ``test_macro_f1`` on the test texts; the accuracy at the
split (``test_accuracy_at_split``: for a split of the warmed-up model, right after expansion and
pruning, before any step; for dense, the warmed-up model itself; NaN for the variants built before
training); the FFNs' non-zero counts (``ffn_nonzero``, ``ffn_in_nonzero``, ``ffn_out_nonzero``);
``train_seconds``, the wall time of the variant's training.

Variants: the splits with modifiers (``random@structured``; see the protocol); ``static_sparse``:
the pretrained FFNs at the expanded width under one random fixed mask per layer with the parent's
count, fine-tuned T1 + T2 steps; ``wide<s>``: the pretrained FFNs widened *densely* to about ``s``
times their non-zeros (Net2WiderNet: every unit's incoming row is copied to its replicas with a
little noise, its outgoing column divided among them, so the function is kept), fine-tuned T1 + T2
steps: a ceiling with more non-zeros.

Data: ``data_dir`` (``--data``): a folder with ``train/`` and ``test/`` (one subfolder of ``.txt``
files per class) or a CSV of ``text,label[,split]``; ``None``: the Debian ``fortunes`` categories
(:mod:`torchfpe.data.textsets`), split 75/25 by ``split_seed``. ``max_classes`` keeps the largest
classes, ``train_size`` texts are drawn per seed from the training part, ``test_size`` from the
test part once (by ``split_seed``: every seed is scored on the same texts).

``encoder="tiny-bert"`` is a randomly initialised 2-layer BERT (hidden 16, FFN 32) with a hashing
word tokenizer: no pretraining, for tests and smoke runs only.

Defaults and why (each a config field, overridable with ``--set``), measured on one core of the
project's 2-core Xeon: a dense step of 8 texts × 32 tokens costs 0.20 CPU seconds, an FPE step at
α = 2 0.42 s (masked layers at twice the width), a dense-wide step 0.30 s, scoring a text 5 ms; one
run (one seed, the five default variants, 60 + 60 steps) is about 190 CPU seconds, the default study
(5 seeds) about 16 CPU minutes (``splits``, the four FPE variants at α 2 and 4, about twice that):

- 32 tokens per text, 8 texts per step, 60 + 60 steps: dense reaches about 60 % on 10 classes and is
  still learning (53 % after the warm-up), so the split happens mid-training, where the paper says
  splitting works best;
- the embeddings frozen: they hold half of MiniLM's weights (11.7 M of 22.7 M) and FPE does not
  touch them, so the non-zero count compared is the encoder's and the head's;
- Adam at lr 1e-4 (3e-4 gave 53 % against 60 % for dense at seed 0) with the head at 10× (it starts
  from random), gradients clipped to norm 1, the model's own dropout (0.1, seeded per phase);
- the 10 largest fortunes categories (the 40 have as few as 22 texts; 10 keep ≥ 434 each), 4000
  training texts drawn per seed, 400 test texts (the same for every seed).
"""

from __future__ import annotations

import copy
import functools
import math
import os
import re
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...core import ExpandedLayer, find_ffn_pairs
from ...core.validation import Interval, Options, invalid
from . import protocol
from .studies import Study

EVAL_BATCH = 64  # texts per forward pass when scoring
MAX_SEQ_LEN = 512  # BERT's position embeddings
WIDE_NOISE = 1e-2  # replicas' incoming rows get this much noise (× the row's std) to break their symmetry
TINY = "tiny-bert"
MINILM = "all-minilm-l6-v2"
LAYER = re.compile(r"\.layer\.(\d+)\.")


# ------------------------------------------------------------------------------------------ encoders
@dataclass
class Encoder:
    """A pretrained text encoder: ``tokenize(texts, length) -> (ids, mask)`` (LongTensors (N, length)),
    the model (``model(input_ids=, attention_mask=).last_hidden_state``) and its hidden size."""

    name: str
    tokenize: Callable[[Sequence[str], int], tuple[torch.Tensor, torch.Tensor]]
    model: nn.Module
    hidden: int


def _minilm() -> Encoder:
    from ...data.minilm import MINILM_DIM, load_minilm

    tokenizer, model = load_minilm()

    def tokenize(texts, length):
        batch = tokenizer(list(texts), padding="max_length", truncation=True, max_length=length, return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]

    return Encoder(MINILM, tokenize, model, MINILM_DIM)


TINY_VOCAB = 512


def _tiny() -> Encoder:
    """A random 2-layer BERT (seed 0) and a word tokenizer hashing lower-cased words (CRC32) into its vocabulary."""
    import transformers

    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    try:
        config = transformers.BertConfig(vocab_size=TINY_VOCAB, hidden_size=16, num_hidden_layers=2,
                                         num_attention_heads=2, intermediate_size=32, max_position_embeddings=MAX_SEQ_LEN)
        model = transformers.BertModel(config, add_pooling_layer=False)
    finally:
        torch.random.set_rng_state(state)

    def tokenize(texts, length):
        ids = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            words = [1] + [2 + zlib.crc32(w.encode()) % (TINY_VOCAB - 2) for w in re.findall(r"\w+", text.lower())]
            words = words[:length]
            ids[row, :len(words)] = torch.tensor(words)
        return ids, (ids != 0).long()

    return Encoder(TINY, tokenize, model.eval(), 16)


#: Encoders by name (``encoder`` config field).
ENCODERS: dict[str, Callable[[], Encoder]] = {MINILM: _minilm, TINY: _tiny}


@functools.lru_cache(maxsize=2)
def load_encoder(name: str) -> Encoder:
    """The encoder ``name``, loaded once per process (every parent is a deep copy of its model)."""
    return ENCODERS[name]()


# ------------------------------------------------------------------------------------------ the model
def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The average of ``hidden`` (B, T, D) over the positions where ``mask`` (B, T) is 1."""
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class TextClassifier(nn.Module):
    """An encoder, mean pooling and a linear head. Input: (B, 2, T) holding token ids and the attention mask."""

    def __init__(self, encoder: nn.Module, hidden: int, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0], x[:, 1]
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return self.head(mean_pool(hidden, mask))


def ffn_pairs(config: "FinetuneConfig", model: nn.Module) -> list[tuple[str, ...]]:
    """The FFN blocks to expand: :func:`torchfpe.find_ffn_pairs` of the model, kept to ``ffn_layers``."""
    pairs = find_ffn_pairs(model)
    if config.ffn_layers is None:
        return pairs
    return [p for p in pairs if int(LAYER.search(p[0]).group(1)) in config.ffn_layers]


def ffn_nonzero(config: "FinetuneConfig", model: nn.Module) -> dict:
    """Non-zero counts of the chosen FFNs' layers (weights and biases): incoming, outgoing, both."""
    def count(name: str) -> int:
        return sum(int(torch.count_nonzero(p.detach())) for p in model.get_submodule(name).parameters(recurse=False))

    pairs = ffn_pairs(config, model)
    incoming = sum(count(name) for pair in pairs for name in pair[:-1])
    outgoing = sum(count(pair[-1]) for pair in pairs)
    return {"ffn_in_nonzero": incoming, "ffn_out_nonzero": outgoing, "ffn_nonzero": incoming + outgoing}


def widen_ffn(incoming: nn.Linear, outgoing: nn.Linear, width: int, generator: torch.Generator) -> tuple[nn.Linear,
                                                                                                       nn.Linear]:
    """Net2WiderNet: dense layers of ``width`` hidden units computing (but for the noise) the same function.

    Unit ``j`` copies parent ``j mod h``; each parent's outgoing column is divided among its copies;
    copies beyond the first get ``WIDE_NOISE`` × std noise on their incoming row (else they stay equal).
    """
    hidden = incoming.out_features
    parent = torch.arange(width) % hidden
    copies = torch.bincount(parent, minlength=hidden).to(incoming.weight.dtype)
    wide_in = nn.Linear(incoming.in_features, width, bias=incoming.bias is not None, dtype=incoming.weight.dtype)
    wide_out = nn.Linear(width, outgoing.out_features, bias=outgoing.bias is not None, dtype=outgoing.weight.dtype)
    with torch.no_grad():
        weight = incoming.weight[parent].clone()
        noise = torch.randn(weight.shape, generator=generator, dtype=weight.dtype) * WIDE_NOISE * incoming.weight.std()
        weight[hidden:] += noise[hidden:]
        wide_in.weight.copy_(weight)
        if incoming.bias is not None:
            wide_in.bias.copy_(incoming.bias[parent])
        wide_out.weight.copy_(outgoing.weight[:, parent] / copies[parent])
        if outgoing.bias is not None:
            wide_out.bias.copy_(outgoing.bias)
    for old, new in ((incoming, wide_in), (outgoing, wide_out)):
        new.requires_grad_(old.weight.requires_grad)
    return wide_in, wide_out


def wide_width(scale: float, d_model: int, d_ff: int) -> int:
    """The FFN width whose dense FFN (two layers with biases) holds about ``scale`` times the non-zeros of ``d_ff``."""
    def count(width: int) -> int:
        return 2 * d_model * width + width + d_model

    target = scale * count(d_ff)
    return max(d_ff, round((target - d_model) / (2 * d_model + 1)))


# ---------------------------------------------------------------------------------------------- data
@functools.lru_cache(maxsize=4)
def _text_set(source: str, split_seed: int, max_classes: int | None):
    """The labelled texts (train/test), kept to the ``max_classes`` largest classes (by training count)."""
    from ...data.textsets import TextSet, load_text_set

    texts = load_text_set(source, seed=split_seed)
    if max_classes is None or max_classes >= texts.num_classes:
        return texts
    counts = np.bincount(texts.y_train, minlength=texts.num_classes)
    kept = sorted(sorted(range(texts.num_classes), key=lambda c: (-counts[c], texts.class_names[c]))[:max_classes])
    relabel = {old: new for new, old in enumerate(kept)}

    def keep(items: list[str], labels: np.ndarray):
        rows = [i for i, y in enumerate(labels) if int(y) in relabel]
        return [items[i] for i in rows], np.asarray([relabel[int(labels[i])] for i in rows], dtype=np.int64)

    train_texts, y_train = keep(texts.train_texts, texts.y_train)
    test_texts, y_test = keep(texts.test_texts, texts.y_test)
    return TextSet(train_texts, y_train, test_texts, y_test, [texts.class_names[c] for c in kept],
                   f"{texts.name.split(' (')[0]} ({len(kept)} largest of {texts.num_classes} classes)",
                   f"{texts.note}; the {len(kept)} classes with the most training texts kept")


def text_set(config: "FinetuneConfig"):
    return _text_set(config.data_dir or "fortunes", config.split_seed, config.max_classes)


def _subset(count: int, size: int | None, seed: int) -> np.ndarray:
    """``size`` of ``count`` indices drawn with ``seed`` (sorted); all of them when ``size`` is None or larger."""
    if size is None or size >= count:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, size, replace=False))


def _encode(encoder: Encoder, texts: Sequence[str], length: int) -> torch.Tensor:
    ids, mask = encoder.tokenize(texts, length)
    return torch.stack([ids, mask], dim=1).long()


# ------------------------------------------------------------------------------------------ the task
class FinetuneTask(protocol.Task):
    """Text classification by a fine-tuned pretrained encoder. ``Data``: ``x_*`` are (N, 2, seq_len) token ids
    and attention masks, ``y_*`` class labels, ``info`` the :class:`~torchfpe.data.textsets.TextSet`."""

    kind = "multiclass"

    def data(self, config: "FinetuneConfig") -> protocol.Data:
        texts = text_set(config)
        encoder = load_encoder(config.encoder)
        train = _subset(len(texts.train_texts), config.train_size, config.seed)
        test = _subset(len(texts.test_texts), config.test_size, config.split_seed)
        x_train = _encode(encoder, [texts.train_texts[i] for i in train], config.seq_len)
        x_test = _encode(encoder, [texts.test_texts[i] for i in test], config.seq_len)
        return protocol.Data(x_train, torch.as_tensor(texts.y_train[train]), x_test,
                             torch.as_tensor(texts.y_test[test]), info=texts)

    def check(self, config: "FinetuneConfig") -> None:
        """The encoder loadable and the texts readable, before any work."""
        if config.encoder == MINILM:
            from ...data.minilm import check_available

            check_available()
        text_set(config)

    def files(self, config: "FinetuneConfig") -> tuple[str, ...]:
        """A CSV named by ``data_dir`` (its digest is recorded); a folder is not digested."""
        return (config.data_dir,) if config.data_dir and os.path.isfile(config.data_dir) else ()

    def parent(self, config: "FinetuneConfig") -> nn.Module:
        encoder = load_encoder(config.encoder)
        body = copy.deepcopy(encoder.model).to(protocol.DTYPES[config.dtype])
        body.requires_grad_(True)
        if config.freeze_embeddings:
            body.embeddings.requires_grad_(False)
        state = torch.random.get_rng_state()
        torch.manual_seed(config.seed)
        try:
            model = TextClassifier(body, encoder.hidden, text_set(config).num_classes)
        finally:
            torch.random.set_rng_state(state)
        return model.to(protocol.DTYPES[config.dtype])

    def wide_parent(self, config: "FinetuneConfig", scale: float) -> nn.Module:
        model = self.parent(config)
        generator = torch.Generator().manual_seed(config.seed)
        for incoming_name, outgoing_name in ffn_pairs(config, model):
            incoming, outgoing = model.get_submodule(incoming_name), model.get_submodule(outgoing_name)
            width = wide_width(scale, incoming.in_features, incoming.out_features)
            wide_in, wide_out = widen_ffn(incoming, outgoing, width, generator)
            model.set_submodule(incoming_name, wide_in)
            model.set_submodule(outgoing_name, wide_out)
        return model

    def expand_kwargs(self, config: "FinetuneConfig", split: str, data: protocol.Data) -> dict:
        return {"pairs": [list(p) for p in ffn_pairs(config, self._probe(config))]}

    def _probe(self, config: "FinetuneConfig") -> nn.Module:
        return TextClassifier(load_encoder(config.encoder).model, 1, 1)  # only its module names are read

    def train(self, model, config: "FinetuneConfig", data, length, generator, optimizer=None):
        """``length`` optimizer steps on minibatches drawn uniformly from the training texts. A phase that
        starts at the split (``length`` = T2) first scores the model as it enters (see the module docstring)."""
        if starts_at_split(model, config, length, optimizer):
            model._finetune_at_split = accuracy_and_f1(model, data.x_test, data.y_test)[0]
        optimizer = optimizer or make_finetune_optimizer(model, config)
        parameters = [p for group in optimizer.param_groups for p in group["params"]]
        device = next(model.parameters()).device
        started = time.perf_counter()
        dropout_seed = int(torch.randint(2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):  # dropout from the seed and phase, whatever ran before
            torch.manual_seed(dropout_seed)
            model.train()
            for _ in range(length):
                rows = torch.randint(0, len(data.y_train), (config.batch_size,), generator=generator).to(device)
                loss = F.cross_entropy(model(data.x_train[rows]), data.y_train[rows])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip is not None:
                    nn.utils.clip_grad_norm_(parameters, config.grad_clip)
                optimizer.step()
        model._finetune_seconds = getattr(model, "_finetune_seconds", 0.0) + time.perf_counter() - started
        return optimizer

    def evaluate(self, model, config: "FinetuneConfig", data) -> dict:
        accuracy, f1 = accuracy_and_f1(model, data.x_test, data.y_test)
        return {"test_accuracy": accuracy, "test_macro_f1": f1}

    def record_extras(self, config: "FinetuneConfig", variant: str, model: nn.Module, data: protocol.Data) -> dict:
        return {"dataset": data.info.name, "standin": config.encoder != MINILM, "classes": data.info.num_classes,
                "hidden_units": model.get_submodule(ffn_pairs(config, model)[0][0]).out_features,
                "test_accuracy_at_split": getattr(model, "_finetune_at_split", math.nan),
                "train_seconds": round(getattr(model, "_finetune_seconds", math.nan), 2), **ffn_nonzero(config, model)}


def starts_at_split(model: nn.Module, config: "FinetuneConfig", length: int, optimizer) -> bool:
    """Whether a training phase starts at the split: dense going on (its optimizer is handed back), or an
    expanded model trained for T2 (a split of the warmed-up model; those built at init train T1 + T2)."""
    if optimizer is not None:
        return True
    expanded = any(isinstance(m, ExpandedLayer) for m in model.modules())
    return expanded and length == config.steps_after


def make_finetune_optimizer(model: TextClassifier, config: "FinetuneConfig") -> torch.optim.Optimizer:
    """The config's optimizer over the trainable parameters, the head's learning rate ``head_lr_scale`` × lr."""
    head = [p for p in model.head.parameters() if p.requires_grad]
    body = [p for p in model.encoder.parameters() if p.requires_grad]
    groups = [{"params": body, "lr": config.lr}, {"params": head, "lr": config.lr * config.head_lr_scale}]
    kwargs = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, **kwargs)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, **kwargs)
    return torch.optim.SGD(groups, momentum=0.9, **kwargs)


@torch.no_grad()
def accuracy_and_f1(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Accuracy and macro-F1 (over the classes that occur as labels or predictions, as scikit-learn's default)."""
    was_training = model.training
    model.eval()
    predicted = torch.cat([model(chunk).argmax(dim=1) for chunk in x.split(EVAL_BATCH)]).cpu()
    model.train(was_training)
    y = y.cpu()
    return float((predicted == y).float().mean()), macro_f1(predicted, y)


def macro_f1(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """Unweighted mean F1 of the classes found in ``labels`` or ``predicted``."""
    classes = torch.unique(torch.cat([predicted, labels]))
    scores = []
    for c in classes:
        tp = int(((predicted == c) & (labels == c)).sum())
        fp = int(((predicted == c) & (labels != c)).sum())
        fn = int(((predicted != c) & (labels == c)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn))
    return float(np.mean(scores))


TASK = FinetuneTask()


# ------------------------------------------------------------------------------------------ the config
@dataclass(frozen=True)
class FinetuneConfig(protocol.ProtocolBase):
    """One fine-tuning run. Defaults: see the module docstring for why."""

    # data
    data_dir: str | None = None  # --data: a train/test folder of .txt files or a CSV; None: the fortunes categories
    split_seed: int = 0  # draws the fortunes' (or a split-less CSV's) train/test split and the test subset
    max_classes: int | None = 10  # keep the classes with the most training texts; None: all
    train_size: int | None = 4000  # training texts drawn per seed; None: all
    test_size: int | None = 400  # test texts scored (the same for every seed); None: all
    seq_len: int = 32  # tokens per text (truncated or padded)
    # model
    encoder: str = MINILM
    ffn_layers: tuple[int, ...] | None = None  # indexes of the layers whose FFN is expanded; None: all
    freeze_embeddings: bool = True
    # training, in optimizer steps
    lr: float = 1e-4
    head_lr_scale: float = 10.0
    batch_size: int = 8  # texts per step
    warmup_steps: int = 60  # T1: dense fine-tuning before the split
    steps_after: int = 60  # T2: steps after it
    grad_clip: float | None = 1.0
    variants: tuple[str, ...] = ("dense", "random", "grouped@structured", "static_sparse", "wide2")

    task: ClassVar[protocol.Task] = TASK
    phase_fields: ClassVar[tuple[str, str]] = ("warmup_steps", "steps_after")

    def normalise(self) -> None:
        super().normalise()
        if isinstance(self.ffn_layers, (list, int)):  # --set ffn_layers=[4,5] or 5
            layers = (self.ffn_layers,) if isinstance(self.ffn_layers, int) else tuple(self.ffn_layers)
            object.__setattr__(self, "ffn_layers", layers)

    def constraints(self) -> dict:
        count = Interval(int, 1)
        return {
            "data_dir": [str, None], "split_seed": [Interval(int, 0, 2**32 - 1)], "max_classes": [Interval(int, 2), None],
            "train_size": [count, None], "test_size": [count, None], "seq_len": [Interval(int, 2, MAX_SEQ_LEN)],
            "encoder": [Options(tuple(ENCODERS))], "ffn_layers": [tuple, None], "freeze_embeddings": [bool],
            "head_lr_scale": [Interval(float, 0.0, None, closed="neither")],
            "grad_clip": [Interval(float, 0.0, None, closed="neither"), None],
            **super().constraints(), "batch_size": [count],
        }

    def check(self) -> None:
        owner = type(self).__name__
        layers = self.ffn_layers
        if layers is not None and (not layers or len(set(layers)) != len(layers)
                                   or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers)):
            raise invalid("ffn_layers", owner, "None or a non-empty list of distinct layer indexes >= 0", layers)
        if self.alpha > 16:
            raise invalid("alpha", owner, "an int in [2, 16] (each child keeps 1/alpha of a 384-wide fan-in)", self.alpha)


# ------------------------------------------------------------------------------------------ studies
def finetune_meta() -> dict:
    """What the fine-tuning studies' reports need: the layout and the data note."""
    return {"layout": "cells",
            "dataset_note": "texts classified by all-MiniLM-L6-v2 fine-tuned with a mean-pooled linear head; by default "
                            "the 10 largest categories of the Debian fortunes, else the --data folder or CSV the data "
                            "set's name in each table gives"}


DEFAULT_VARIANTS = "dense+random+grouped@structured+static_sparse+wide2"
STUDIES = (
    Study("compare", "finetune", "all-MiniLM-L6-v2 fine-tuned on the fortunes categories, every FFN expanded at α = 2: "
          "FPE random (global budget) and grouped (structured budget) against dense fine-tuning at the same non-zero "
          "count, static sparsity at the expanded width and dense at twice the FFN non-zeros (a ceiling)",
          {"alpha": (2,)}, {"variants": DEFAULT_VARIANTS}, default_seeds=5, group="finetune", meta=finetune_meta()),
    Study("splits", "finetune", "splits × budgets × α: random and grouped, global and structured budgets, α 2 and 4 "
          "(about 4× the default study's time)", {"alpha": (2, 4)},
          {"variants": "dense+random+grouped+random@structured+grouped@structured"}, default_seeds=5,
          group="finetune", meta=finetune_meta()),
    Study("alpha4", "finetune", "the default study at α = 4: FPE against static sparsity at 4× the width and dense at "
          "4× the FFN non-zeros", {"alpha": (4,)},
          {"variants": "dense+random+grouped@structured+static_sparse+wide4"}, default_seeds=5, group="finetune",
          meta=finetune_meta()),
)

EXPERIMENT = protocol.register("finetune", FinetuneConfig, STUDIES)


# ------------------------------------------------------------------------------------------ summary
SUMMARY_METRICS = (("test_accuracy", "accuracy"), ("test_macro_f1", "macro-F1"),
                   ("test_accuracy_at_split", "accuracy at the split"))


def summary_table(records: Sequence[dict]) -> str:
    """A markdown table per config (without seed) and variant: accuracy, macro-F1 and the accuracy at the split
    (mean, 95 % CI), each variant's paired difference from dense of the same seed (95 % CI, p), the non-zeros
    and the training seconds. The statistics are :mod:`torchfpe.lab.report.stats`'."""
    from ..report.stats import fmt_ci, fmt_p, fmt_pct, paired_test, summarize_accuracy

    header = ["α", "variant", "seeds", "FFN width", "non-zeros", *(f"{label} % [95 % CI]" for _, label in SUMMARY_METRICS),
              *(f"Δ {label} vs dense, points [95 % CI], p" for _, label in SUMMARY_METRICS[:2]), "train s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for alpha in sorted({r["alpha"] for r in records}):
        cell = [r for r in records if r["alpha"] == alpha]
        dense = {r["seed"]: r for r in cell if r["variant"] == "dense"}
        for variant in dict.fromkeys(r["variant"] for r in cell):
            runs = sorted((r for r in cell if r["variant"] == variant), key=lambda r: r["seed"])
            row = [str(alpha), variant, str(len(runs)), str(runs[0]["hidden_units"]),
                   f"{np.mean([r['nonzero_parameters'] for r in runs]):,.0f}"]
            for key, _ in SUMMARY_METRICS:
                s = summarize_accuracy([r[key] for r in runs])
                row.append(f"{fmt_pct(s.mean)} {fmt_ci(s.ci_low, s.ci_high)}" if s.n else "—")
            for key, _ in SUMMARY_METRICS[:2]:
                paired = [(r[key], dense[r["seed"]][key]) for r in runs if r["seed"] in dense]
                if variant == "dense" or not paired:
                    row.append("—")
                    continue
                t = paired_test([a for a, _ in paired], [b for _, b in paired])
                row.append(f"{fmt_pct(t.mean_diff, True)} {fmt_ci(t.ci_low, t.ci_high, True)}, p = {fmt_p(t.p)}")
            row.append(f"{np.mean([r['train_seconds'] for r in runs]):.0f}")
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m torchfpe.lab.experiments.finetune RESULT_FOLDER``: print :func:`summary_table` of its records.csv."""
    import sys

    import pandas as pd

    folder = (argv if argv is not None else sys.argv[1:])[0]
    print(summary_table(pd.read_csv(f"{folder}/records.csv").to_dict("records")))


if __name__ == "__main__":
    main()
