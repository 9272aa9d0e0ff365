"""Which layers ``expand`` can split, and where they sit in real models (transformer FFNs).

Three block shapes are supported:

- **plain** ``Linear → element-wise → Linear`` (BERT's ``intermediate.dense → output.dense``, ViT/CLIP/
  OPT ``fc1 → fc2``, T5 ``wi → wo``, DistilBERT ``lin1 → lin2``): a pair ``("in", "out")``;
- **GPT-2's** ``Conv1D`` (``transformers.pytorch_utils.Conv1D``): a linear layer whose weight is
  stored transposed, ``(in, out)``. It is found by duck typing (no import of transformers), read as
  a linear layer and replaced by a :class:`~torchfpe.core.layouts.MaskedLinear` after expansion;
- **gated** MLPs (LLaMA, Mistral, Qwen, gated T5 ``wi_0, wi_1 → wo``: ``down(act(gate(x)) * up(x))``): a triple
  ``("gate", "up", "down")``. Both incoming layers are split together: child ``k`` of unit ``i`` gets
  the same input subset in ``gate`` and in ``up`` (one child structure, drawn from the first
  layer's weights), and ``down``'s column ``i`` is copied to every child.

:func:`find_ffn_pairs` finds these blocks by module names, as peft's ``target_modules`` do, so that
``expand(model, 2, pairs=find_ffn_pairs(model))`` widens every FFN of a transformer. Fused
mixture-of-experts blocks (every expert's weights in one 3-D parameter, as Mixtral's in transformers 5)
are refused by name: there is no linear layer per expert to split.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from .validation import InvalidParameterError, Sequences, check_param, invalid

#: Modules that act on each unit separately, so a Linear followed by them still feeds the next
#: Linear unit by unit. Norms that mix units (LayerNorm) or carry per-unit parameters (BatchNorm)
#: end the chain: name such pairs explicitly with ``pairs=`` only if the norm is handled by you.
ELEMENTWISE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Identity, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Softplus, nn.Softsign, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid,
    nn.LogSigmoid, nn.Tanhshrink, nn.Softshrink, nn.Hardshrink, nn.Threshold, nn.Dropout, nn.AlphaDropout,
)

#: FFN shapes by child module names: (incoming layers, outgoing layer), relative to the block.
FFN_PATTERNS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("gate_proj", "up_proj"), "down_proj"),  # LLaMA, Mistral, Qwen, Gemma
    (("w1", "w3"), "w2"),                      # Mixtral experts, some LLaMA ports
    (("intermediate.dense",), "output.dense"),  # BERT, RoBERTa (the layer holds both)
    (("c_fc",), "c_proj"),                     # GPT-2 (Conv1D)
    (("fc1",), "fc2"),                         # ViT, CLIP, OPT, BART
    (("wi_0", "wi_1"), "wo"),                  # T5 v1.1, Flan-T5 (gated)
    (("wi",), "wo"),                           # T5
    (("lin1",), "lin2"),                       # DistilBERT
    (("dense_h_to_4h",), "dense_4h_to_h"),     # GPT-NeoX, Falcon
)


def is_conv1d(module: nn.Module) -> bool:
    """GPT-2's ``Conv1D`` (duck-typed): ``nf`` outputs and a weight of shape ``(in, nf)``."""
    weight = getattr(module, "weight", None)
    return (type(module).__name__ == "Conv1D" and isinstance(getattr(module, "nf", None), int)
            and isinstance(weight, nn.Parameter) and weight.dim() == 2 and weight.shape[1] == module.nf)


def is_expandable(module: nn.Module) -> bool:
    """An ``nn.Linear`` (masked layers included) or a GPT-2 ``Conv1D``."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def features(module: nn.Module) -> tuple[int, int]:
    """(in, out) features of an expandable layer."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return int(module.weight.shape[0]), int(module.weight.shape[1])


def as_linear(module: nn.Module) -> nn.Linear:
    """An ``nn.Linear`` computing the same function as a ``Conv1D`` (weight transposed; grads kept)."""
    in_features, out_features = features(module)
    linear = nn.Linear(in_features, out_features, bias=module.bias is not None,
                       device=module.weight.device, dtype=module.weight.dtype)
    linear.weight = nn.Parameter(module.weight.detach().t().contiguous(), requires_grad=module.weight.requires_grad)
    if module.bias is not None:
        linear.bias = nn.Parameter(module.bias.detach().clone(), requires_grad=module.bias.requires_grad)
    linear.train(module.training)
    return linear


def _check_target_modules(target_modules) -> None:
    """A regular expression (a str that compiles), a non-empty list of path suffixes, or None."""
    owner = "find_ffn_pairs"
    expected = "a regular expression on the full module path (str), a non-empty list of module-path suffixes or None"
    if target_modules is None:
        return
    if isinstance(target_modules, str):
        try:
            re.compile(target_modules)
        except re.error as error:
            raise invalid("target_modules", owner, f"a valid regular expression on the full module path ({error}) "
                          "or a list of module-path suffixes", target_modules) from None
        return
    if not Sequences((str,), 1).accepts(target_modules):
        raise invalid("target_modules", owner, expected, target_modules)


def _check_patterns(patterns) -> None:
    """A non-empty list of (incoming names, outgoing name) pairs, as :data:`FFN_PATTERNS`."""
    def pair(entry) -> bool:
        if isinstance(entry, (str, bytes)) or not isinstance(entry, Sequence) or len(entry) != 2:
            return False
        incoming, outgoing = entry
        return (Sequences((str,), 1).accepts(incoming) and all(incoming)
                and isinstance(outgoing, str) and bool(outgoing))

    if isinstance(patterns, (str, bytes)) or not isinstance(patterns, Sequence) or not patterns \
            or not all(pair(entry) for entry in patterns):
        raise invalid("patterns", "find_ffn_pairs", "a non-empty list of (incoming module names, outgoing module "
                      "name) pairs such as [(['gate_proj', 'up_proj'], 'down_proj'), (['c_fc'], 'c_proj')]", patterns)


def _matches(path: str, target_modules: str | Sequence[str] | None) -> bool:
    if target_modules is None:
        return True
    if isinstance(target_modules, str):  # peft: one string is a regular expression on the full path
        return re.fullmatch(target_modules, path) is not None
    return any(path == t or path.endswith(f".{t}") for t in target_modules)


def find_ffn_pairs(
    model: nn.Module,
    target_modules: str | Sequence[str] | None = None,
    patterns: Sequence[tuple[Sequence[str], str]] = FFN_PATTERNS,
) -> list[tuple[str, ...]]:
    """Entries for ``expand(..., pairs=...)``: every FFN block of ``model`` named as in ``patterns``.

    A block is a module holding the incoming and outgoing layers of one pattern (all of them
    :func:`is_expandable`); it gives ``(incoming, outgoing)`` or, for gated MLPs,
    ``(gate, up, down)``. ``target_modules`` keeps only blocks with a layer whose path matches,
    as in peft: a string is a regular expression matched against the full module path; a list
    matches path suffixes (``["c_fc"]``, ``["layers.0.mlp.gate_proj"]``).

    Mixture-of-experts blocks that hold all experts' weights in 3-D parameters (Mixtral, Qwen-MoE in
    transformers 5) have no ``nn.Linear`` per expert to split: a matching one raises
    ``InvalidParameterError`` naming it (exclude it with ``target_modules``).
    """
    check_param("model", model, [nn.Module], "find_ffn_pairs")
    _check_target_modules(target_modules)
    _check_patterns(patterns)
    fused = [(path, module) for path, module in model.named_modules()
             if _fused_experts(module) and _matches(path, target_modules)]
    if fused:
        path, module = fused[0]
        shapes = ", ".join(f"{name} {tuple(p.shape)}" for name, p in module.named_parameters(recurse=False))
        raise InvalidParameterError(
            f"{path!r} is a {type(module).__name__} holding all experts' weights fused in 3-D parameters ({shapes}); "
            "expand splits nn.Linear (and GPT-2 Conv1D) layers only, so fused mixture-of-experts FFNs are not "
            f"supported ({len(fused)} such block(s); pass target_modules= to leave them out)")
    found: list[tuple[str, ...]] = []
    used: set[str] = set()
    for prefix, block in model.named_modules():
        for incoming, outgoing in patterns:
            names = [*incoming, outgoing]
            try:
                modules = [block.get_submodule(name) for name in names]
            except AttributeError:
                continue
            if not all(is_expandable(m) for m in modules):
                continue
            paths = tuple(f"{prefix}.{name}" if prefix else name for name in names)
            if used & set(paths) or not any(_matches(p, target_modules) for p in paths):
                continue
            used.update(paths)
            found.append(paths)
    return found


def _fused_experts(module: nn.Module) -> bool:
    """A mixture-of-experts module storing every expert's matrix in one 3-D parameter (experts, out, in)."""
    return "expert" in type(module).__name__.lower() and any(
        p.dim() == 3 for p in module.parameters(recurse=False))


# ------------------------------------------------------------------------ nn.Sequential discovery
def sequential_leaves(module: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    leaves = []
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if isinstance(child, nn.Sequential):
            leaves.extend(sequential_leaves(child, path + "."))
        else:
            leaves.append((path, child))
    return leaves


def find_hidden_pairs(model: nn.Sequential, layer_types: tuple[type, ...] = (nn.Linear,)) -> list[tuple[str, str]]:
    """(incoming, outgoing) pairs of an ``nn.Sequential``: Linears joined by element-wise modules only.

    Nested ``nn.Sequential`` containers are read in order; the last Linear is never an incoming layer.
    ``layer_types`` are the modules that count as layers (``pack`` adds its packed layouts).
    """
    pairs = []
    pending: str | None = None
    for path, module in sequential_leaves(model):
        if isinstance(module, layer_types):
            if pending is not None:
                pairs.append((pending, path))
            pending = path
        elif not isinstance(module, ELEMENTWISE_MODULES) or (isinstance(module, nn.PReLU) and module.num_parameters > 1):
            pending = None
    return pairs


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(root.get_submodule(parent_path) if parent_path else root, name, module)


# -------------------------------------------------------------------------------- pair resolution
def resolve_pairs(model: nn.Module, pairs, layers) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(incoming, outgoing) pairs and the gated companions ``{up: gate}`` split like their leader."""
    companions: dict[str, str] = {}
    if pairs is None:
        if not isinstance(model, nn.Sequential):
            raise InvalidParameterError(
                f"expand() finds hidden layers itself only in nn.Sequential; for {type(model).__name__} pass "
                "pairs=[('incoming.module.path', 'outgoing.module.path'), ...] "
                "(torchfpe.find_ffn_pairs(model) finds transformer FFN blocks)"
            )
        pairs = find_hidden_pairs(model)
        if layers is not None:
            known = [incoming for incoming, _ in pairs]
            unknown = [name for name in layers if name not in known]
            if unknown:
                raise InvalidParameterError(f"layers={unknown!r} are not hidden layers of this model; hidden layers: {known}")
            pairs = [pair for pair in pairs if pair[0] in set(layers)]
    else:
        if layers is not None:
            raise InvalidParameterError("pass either pairs= or layers=, not both (pairs already selects the layers)")
        if isinstance(pairs, (str, bytes)) or not isinstance(pairs, Sequence):
            raise InvalidParameterError("the 'pairs' parameter of expand must be a list of (incoming, outgoing) "
                                        f"or (gate, up, down) module-path tuples; got {pairs!r}")
        entries = list(pairs)
        if not entries:
            raise InvalidParameterError(
                "pairs=[] gives no pair to expand: name (incoming, outgoing) or (gate, up, down) module paths; if the "
                "list came from find_ffn_pairs(model), it found no FFN block named as in FFN_PATTERNS (pass "
                "patterns= or the pairs yourself)")
        pairs = []
        for entry in entries:
            if not (isinstance(entry, (tuple, list)) and len(entry) in (2, 3) and all(isinstance(p, str) for p in entry)):
                raise InvalidParameterError(
                    f"each entry of pairs must be an (incoming, outgoing) or (gate, up, down) tuple of module "
                    f"paths, got {entry!r}")
            if len(entry) == 3:
                gate, up, down = entry
                if up == gate:
                    raise InvalidParameterError(f"gated entry {tuple(entry)!r} names one layer twice")
                companions[up] = gate
                pairs.append((gate, down))
            else:
                pairs.append(tuple(entry))
    if not pairs:
        raise InvalidParameterError("the model has no hidden layer to expand: no nn.Linear feeds another nn.Linear "
                                    "through element-wise modules only (pass pairs=... to name them)")
    incoming_seen, outgoing_seen = set(), set()

    def layer(name: str) -> nn.Module:
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise InvalidParameterError(f"pairs names {name!r}, which is not a submodule of the model") from None
        if not is_expandable(module):
            raise InvalidParameterError(f"pairs names {name!r}, a {type(module).__name__}; only nn.Linear layers "
                                        "(and GPT-2 Conv1D) can be expanded")
        check_materialised(name, module)
        return module

    for incoming, outgoing in pairs:
        modules = [layer(incoming), layer(outgoing)]
        if incoming == outgoing:
            raise InvalidParameterError(f"pair ({incoming!r}, {outgoing!r}) names one layer twice")
        if features(modules[0])[1] != features(modules[1])[0]:
            raise InvalidParameterError(
                f"pair ({incoming!r}, {outgoing!r}) does not chain: {incoming} has {features(modules[0])[1]} "
                f"outputs but {outgoing} has {features(modules[1])[0]} inputs"
            )
        if incoming in incoming_seen or outgoing in outgoing_seen:
            raise InvalidParameterError(f"pair ({incoming!r}, {outgoing!r}) reuses a layer already in another pair's same role")
        incoming_seen.add(incoming)
        outgoing_seen.add(outgoing)
    for up, gate in companions.items():
        if features(layer(up)) != features(model.get_submodule(gate)):
            raise InvalidParameterError(
                f"gated layers {gate!r} and {up!r} must have the same shape to be split together; got "
                f"{features(model.get_submodule(gate))} and {features(layer(up))} (in, out) features")
        if up in incoming_seen or up in outgoing_seen:
            raise InvalidParameterError(f"layer {up!r} is both a gated companion and in another pair")
    return pairs, companions


def check_materialised(name: str, module: nn.Module) -> None:
    """Refuse layers whose weights do not exist yet (LazyLinear) or hold no data (meta device)."""
    if isinstance(module, LazyModuleMixin) or any(isinstance(p, UninitializedParameter) for p in module.parameters()):
        raise InvalidParameterError(f"layer {name!r} is an uninitialised lazy layer ({type(module).__name__}); "
                                    "run one forward pass (or load its weights) before expand")
    if any(p.is_meta for p in module.parameters(recurse=False)):
        raise InvalidParameterError(f"layer {name!r} is on the meta device (no weight values); load or "
                                    "materialise its weights (e.g. model.to_empty(...) and load_state_dict) before expand")


def check_not_shared(model: nn.Module, touched: Sequence[str]) -> None:
    """A layer used at two places (tied) would be split at one and not the other: refuse it."""
    paths: dict[int, list[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(module), []).append(path)
    owners: dict[int, list[str]] = {}
    for path, module in model.named_modules(remove_duplicate=False):
        for pname, param in module.named_parameters(recurse=False, remove_duplicate=False):
            owners.setdefault(id(param), []).append(f"{path}.{pname}" if path else pname)
    for name in touched:
        module = model.get_submodule(name)
        others = [p for p in paths[id(module)] if p != name]
        if others:
            raise InvalidParameterError(
                f"layer {name!r} is shared: the same module is also used as {others[0]!r}; expand cannot "
                "split a layer used at two places (give each place its own copy first)")
        for pname, param in module.named_parameters(recurse=False):
            here = f"{name}.{pname}"
            others = [p for p in owners[id(param)] if p != here and not p.startswith(f"{name}.")]
            if others:
                raise InvalidParameterError(
                    f"layer {name!r} shares its {pname} with {others[0]!r} (tied weights); expand cannot split "
                    "tied layers (untie them first)")
