"""The Triton kernels of the ``block`` and ``parent`` layouts against the masked reference and the
layouts' torch paths: outputs, input gradients, value and bias gradients, float32 and bfloat16.

Without a GPU the kernels run on the CPU under Triton's interpreter: ``TRITON_INTERPRET=1`` must be
in the environment when the kernel modules are imported (``triton.jit`` reads it when it decorates),
so it is set here before anything imports them; only this module imports them on a CPU-only
machine (the layouts call the kernels for CUDA tensors alone). With a GPU the same tests run the
compiled kernels on it. Skipped where Triton is not installed (``pip install 'torchfpe[gpu]'``).
Shapes are tiny: the interpreter runs a kernel in Python.
"""

from __future__ import annotations

import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
pytest.importorskip("triton")

import torchfpe  # noqa: E402
from torchfpe.core import BlockLinear, ParentLinear, expanded_layers, kernels  # noqa: E402
from helpers import bias_grad_dense, mlp, values_grad_dense  # noqa: E402

DEVICE = torch.device("cuda" if CUDA else "cpu")
#: Tolerances against float32 references: a float32 kernel sums in another order; a half kernel
#: rounds its float32 sum once (8 bits of mantissa in bfloat16, 11 in float16).
TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
             torch.float16: dict(atol=5e-3, rtol=5e-3)}


@pytest.fixture
def triton_here(monkeypatch):
    """The layers take the kernels for tensors on this machine's device (the CPU: interpreted);
    ``calls`` counts the layers they served."""
    calls: list[str] = []
    forward = kernels.forward

    def counted(layer, input):  # noqa: A002
        y = forward(layer, input)
        if y is not None:
            calls.append(layer.layout)
        return y

    monkeypatch.setattr(kernels, "DEVICES", ("cuda", DEVICE.type))
    monkeypatch.setattr(kernels, "forward", counted)
    monkeypatch.delenv(kernels.SWITCH, raising=False)
    return calls


def build(sizes, split, alpha, layout, dtype=torch.float32):
    """(masked model, packed model) on DEVICE: ``layout`` for the first layer, ``auto`` elsewhere."""
    masked = torchfpe.expand(mlp(sizes, seed=1), alpha, split, seed=0)
    chosen = layout if layout in ("auto", "block") else {"0": layout}
    packed = torchfpe.pack(masked, chosen)
    return masked.to(DEVICE, dtype), packed.to(DEVICE, dtype)


def run(model, x, weights):
    """Output, and the gradients of ``(output * weights).sum()``: input, then per expanded layer
    (values or weight at natural positions, bias at natural positions) as float32."""
    for p in model.parameters():
        p.grad = None
    x = x.detach().clone().requires_grad_(True)
    y = model(x)
    (y.float() * weights).sum().backward()
    grads = [x.grad.float()]
    for _, layer in expanded_layers(model):
        if hasattr(layer, "values"):
            grads += [values_grad_dense(layer).float(), bias_grad_dense(layer).float()]
        else:
            grads += [(layer.weight.grad * layer.weight_mask).float(), (layer.bias.grad * layer.bias_mask).float()]
    return y.detach().float(), grads


def assert_close(got, want, dtype):
    got_y, got_grads = got
    want_y, want_grads = want
    torch.testing.assert_close(got_y, want_y, **TOLERANCE[dtype])
    assert len(got_grads) == len(want_grads)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, **TOLERANCE[dtype])


CASES = [
    # (sizes, split, alpha, first layer's layout, layouts the kernels must serve)
    ([8, 4, 3], "random", 2, "parent", {"parent"}),
    ([8, 4, 3], "random", 4, "parent", {"parent"}),
    ([8, 4, 3], "random", 3, "parent", {"parent"}),  # alpha not a power of two: padded children
    ([8, 4, 3], "random", 2, "block", {"block"}),  # gathered inputs, output restored
    ([8, 4, 3], "contiguous", 4, "block", {"block"}),  # contiguous chunks, block order out
    ([8, 4, 4, 3], "random", 4, "block", {"block"}),  # holes, several groups: atomic input gradient
    ([8, 4, 4, 3], "contiguous", 2, "auto", {"block"}),  # a middle layer reading block order
    ([37, 21, 3], "random", 3, "parent", {"parent"}),  # odd sizes: several tiles, ragged edges
    ([37, 21, 3], "random", 2, "block", {"block"}),
]


@pytest.mark.parametrize("batch", [1, 6])  # the forward's one-example kernels, then the tl.dot kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("sizes,split,alpha,layout,served", CASES,
                         ids=["x".join(map(str, c[0])) + f"-{c[1]}-a{c[2]}-{c[3]}" for c in CASES])
def test_kernels_match_masked_and_torch_path(triton_here, sizes, split, alpha, layout, served, dtype, batch):
    masked, packed = build(sizes, split, alpha, layout, dtype)
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(batch, sizes[0], generator=generator).to(DEVICE, dtype)
    weights = torch.randn(batch, sizes[-1], generator=generator).to(DEVICE)
    got = run(packed, x, weights)
    assert set(triton_here) == served
    kernels.DEVICES = ("cuda",) if DEVICE.type == "cpu" else ()  # the layers' torch paths (fixture restores)
    torch_path = run(packed, x, weights)
    reference = run(masked.to(torch.float32), x.float(), weights)  # float32 masked model of the same values
    assert_close(got, reference, dtype)
    assert_close(got, torch_path, dtype)  # in half types both round once per layer


@pytest.mark.parametrize("split,layout", [("contiguous", "block"), ("random", "parent")])
def test_several_tiles_along_every_axis(triton_here, split, layout):
    """Sizes above one tile in every loop: 40 examples (float32 tiles of 32), 150 inputs (block
    chunks of 75 in tiles of 64), 70 parents (rows in tiles of 64)."""
    masked, packed = build([150, 70, 3], split, 2, layout)
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(40, 150, generator=generator).to(DEVICE)
    weights = torch.randn(40, 3, generator=generator).to(DEVICE)
    got = run(packed, x, weights)
    assert set(triton_here) == {layout}
    assert_close(got, run(masked, x, weights), torch.float32)


@pytest.mark.parametrize("layout", ["parent", "block"])
def test_permuted_input_and_leading_dimensions(triton_here, layout):
    """A layer reading its input in another order (the previous layer's block order) and a 3-d
    input: the kernels read through the permutation and the gradient lands at the natural inputs."""
    masked = torchfpe.expand(mlp([8, 4, 3], seed=3), 2, "random", seed=0)
    layer = dict(expanded_layers(masked))["0"]
    order = torch.randperm(8, generator=torch.Generator().manual_seed(4))
    packed = (ParentLinear if layout == "parent" else BlockLinear).from_masked(layer, 2, input_order=order)
    packed = packed.to(DEVICE)
    assert (packed.in_gather if layout == "parent" else packed.gather) is not None
    x = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(5)).to(DEVICE).requires_grad_(True)
    y = packed(x)
    y.pow(2).sum().backward()
    assert triton_here == [layout]
    natural = x.detach()[..., positions(order)].clone().requires_grad_(True)  # x[..., p] holds unit order[p]
    reference = layer.to(DEVICE)(natural)
    reference.pow(2).sum().backward()
    torch.testing.assert_close(y, reference, **TOLERANCE[torch.float32])
    torch.testing.assert_close(x.grad[..., positions(order)], natural.grad, **TOLERANCE[torch.float32])
    torch.testing.assert_close(values_grad_dense(packed), layer.weight.grad * layer.weight_mask,
                               **TOLERANCE[torch.float32])


def positions(order: torch.Tensor) -> torch.Tensor:
    """The input position holding each natural unit (the inverse permutation of ``order``)."""
    return torch.argsort(order)


def test_frozen_values_and_no_grad(triton_here):
    """Only the input's gradient (values frozen), then no gradient at all: the same numbers."""
    masked, packed = build([8, 4, 3], "random", 4, "parent")
    for p in packed.parameters():
        p.requires_grad_(False)
    x = torch.randn(3, 8).to(DEVICE).requires_grad_(True)
    packed(x).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    masked(x2).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, **TOLERANCE[torch.float32])
    with torch.no_grad():
        torch.testing.assert_close(packed(x), masked(x), **TOLERANCE[torch.float32])
    assert triton_here == ["parent", "parent"]


def test_switch_off_and_other_dtypes_keep_the_torch_path(triton_here, monkeypatch):
    _, packed = build([8, 4, 3], "random", 2, "block")
    x = torch.randn(3, 8).to(DEVICE)
    monkeypatch.setenv(kernels.SWITCH, "0")
    packed(x)
    assert triton_here == []
    monkeypatch.delenv(kernels.SWITCH)
    packed.double()(x.double())
    assert triton_here == []


@pytest.mark.parametrize("layout", ["parent", "block"])
def test_custom_ops_compile_into_one_graph(triton_here, layout):
    """The fake impls let ``torch.compile`` trace a training step without a graph break (the
    ``aot_eager`` backend traces forward and backward and runs them eagerly: no compiler needed)."""
    _, packed = build([8, 4, 3], "random", 2, layout)
    packed[2] = torch.nn.Linear(4 * 2, 3).to(DEVICE)  # keep the graph to the kernels' layer
    x = torch.randn(3, 8).to(DEVICE)
    torch._dynamo.reset()
    compiled = torch.compile(packed, backend="aot_eager", fullgraph=True)
    compiled(x).sum().backward()
    eager_grad = packed[0].values.grad.clone()
    packed.zero_grad()
    packed(x).sum().backward()
    torch.testing.assert_close(eager_grad, packed[0].values.grad)


def test_kernels_compile_for_the_gpu():
    """Every kernel builds to a cubin for sm_90 (H100) in float32 and bfloat16: the interpreter
    above accepts programs the GPU compiler refuses. In a subprocess, with the interpreter off."""
    import subprocess
    import sys
    from pathlib import Path

    import triton.backends

    if "nvidia" not in triton.backends.backends:
        pytest.skip("this Triton has no NVIDIA backend")
    script = Path(__file__).with_name("triton_compile_check.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, str(script), "90"], capture_output=True, text=True, env=env, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert done.stdout.count("ok ") == 16


def test_cpu_use_never_imports_triton():
    """``import torchfpe`` and packed layers on the CPU import neither Triton nor the kernel modules
    (beyond what ``import torch`` itself loads): the core needs torch alone."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys, torch\n"
            "before = set(sys.modules)\n"
            "import torchfpe\n"
            "model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))\n"
            "for layout in ('block', {'0': 'parent'}):\n"
            "    torchfpe.pack(torchfpe.expand(model, 2, 'random', seed=0), layout)(torch.randn(2, 8)).sum().backward()\n"
            "new = set(sys.modules) - before\n"
            "print(sorted(m for m in new if m.split('.')[0] == 'triton' or 'core.kernels.' in m))\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == "[]"
