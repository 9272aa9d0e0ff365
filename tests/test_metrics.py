"""Tests for torchfpe.metrics: hand-computed values, MC-vs-formula, validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.utils.prune as prune
from torch import nn

from torchfpe.metrics import (
    accuracy,
    capacity_summary,
    clause_coverage_mc,
    clause_coverage_theory,
    collision_probability_mc,
    collision_probability_theory,
    feature_capacity,
    fold_change,
    gram_matrix,
    hidden_weights,
    interference_metrics,
    linear_fit,
    mean_pairwise_cosine,
    relative_gain,
)


def _tol(p: float, trials: int) -> float:
    """Four binomial standard errors."""
    return 4.0 * math.sqrt(p * (1.0 - p) / trials)


def _balanced_same_child(m: int, alpha: int, n: int) -> float:
    """Exact P(m fixed variables share a child) for n = alpha * s, groups of size s.

    alpha * C(s, m) / C(n, m) = prod_{i=1}^{m-1} (s - i) / (n - i).
    """
    assert n % alpha == 0
    s = n // alpha
    return math.prod((s - i) / (n - i) for i in range(1, m))


# ---------------------------------------------------------------- accuracy


def test_accuracy_binary_logits_default_threshold_zero():
    logits = torch.tensor([2.0, -1.0, 0.5, -0.1])  # preds 1,0,1,0
    targets = torch.tensor([1, 0, 0, 0])
    assert accuracy(logits, targets) == pytest.approx(0.75)
    # (N, 1) output and (N, 1) float targets give the same answer
    assert accuracy(logits[:, None], targets[:, None].float()) == pytest.approx(0.75)


def test_accuracy_binary_probabilities_with_threshold():
    probs = torch.tensor([0.9, 0.4, 0.6, 0.2])  # preds at 0.5: 1,0,1,0
    targets = torch.tensor([1.0, 1.0, 1.0, 0.0])
    assert accuracy(probs, targets, threshold=0.5) == pytest.approx(0.75)
    # with the default logit threshold (0) every prob is "positive"
    assert accuracy(probs, targets) == pytest.approx(0.75)
    assert accuracy(probs, torch.tensor([1, 1, 1, 1])) == pytest.approx(1.0)


def test_accuracy_multiclass_argmax():
    logits = torch.tensor([[0.1, 2.0, 0.0], [3.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    targets = torch.tensor([1, 0, 0])
    assert accuracy(logits, targets) == pytest.approx(2 / 3)


def test_accuracy_validation():
    with pytest.raises(ValueError, match="targets"):
        accuracy(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="0 or 1"):
        accuracy(torch.zeros(2), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="threshold"):
        accuracy(torch.zeros(2, 3), torch.tensor([0, 1]), threshold=0.5)
    with pytest.raises(ValueError, match="class indices"):
        accuracy(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="empty"):
        accuracy(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="logits_or_probs"):
        accuracy(torch.zeros(2, 2, 2), torch.zeros(2))


# ---------------------------------------------------------------- ratios


def test_relative_gain_and_fold_change():
    assert relative_gain(0.9, 0.75) == pytest.approx(0.2)
    assert relative_gain(0.6, 0.8) == pytest.approx(-0.25)
    assert fold_change(3.0, 1.5) == pytest.approx(2.0)
    assert fold_change(-1.0, 4.0) == pytest.approx(-0.25)


def test_ratio_validation():
    with pytest.raises(ValueError, match="acc_dense"):
        relative_gain(0.5, 0.0)
    with pytest.raises(ValueError, match="acc_dense"):
        relative_gain(0.5, -0.1)
    with pytest.raises(ValueError, match="value_dense"):
        fold_change(1.0, 0.0)
    with pytest.raises(ValueError, match="acc_variant"):
        relative_gain(float("nan"), 0.5)


# ---------------------------------------------------------------- capacity


def test_gram_matrix_is_wtw():
    w = torch.tensor([[1.0, 2.0, 0.0], [3.0, -1.0, 1.0]])  # (hidden=2, inputs=3)
    expected = torch.tensor([[10.0, -1.0, 3.0], [-1.0, 5.0, -1.0], [3.0, -1.0, 1.0]])
    g = gram_matrix(w)
    assert g.shape == (3, 3)
    torch.testing.assert_close(g, expected)


def test_capacity_orthogonal_features_is_one():
    # 4 orthogonal columns of different lengths in a 5-dim hidden space
    w = torch.zeros(5, 4)
    for i, scale in enumerate([1.0, 2.0, 0.5, 3.0]):
        w[i, i] = scale
    torch.testing.assert_close(feature_capacity(w), torch.ones(4))
    # a rotation keeps columns orthogonal
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=gen, dtype=torch.float64))
    torch.testing.assert_close(feature_capacity(q), torch.ones(6, dtype=torch.float64))


@pytest.mark.parametrize("m", [2, 3, 5])
def test_capacity_identical_features_is_one_over_m(m):
    v = torch.tensor([1.0, -2.0, 0.5])
    w = v[:, None].repeat(1, m)  # (3, m), all columns equal
    torch.testing.assert_close(feature_capacity(w), torch.full((m,), 1.0 / m))
    summary = capacity_summary(w)
    assert summary["sum"] == pytest.approx(1.0)  # they share one dimension
    assert summary["mean"] == pytest.approx(1.0 / m)


def test_capacity_hand_2x2():
    # columns v1 = (1, 0), v2 = (1, 1); G = [[1, 1], [1, 2]]
    # C1 = 1^2 / (1^2 + 1^2) = 1/2 ; C2 = 2^2 / (1^2 + 2^2) = 4/5
    w = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    torch.testing.assert_close(feature_capacity(w), torch.tensor([0.5, 0.8]))
    s = capacity_summary(w)
    assert s["sum"] == pytest.approx(1.3)
    assert s["mean"] == pytest.approx(0.65)


def test_capacity_zero_column_is_zero():
    # column 1 is zero: capacity 0, and it must not affect column 0 / 2
    w = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    # v0 = (1,0), v2 = (1,1) -> same as the hand case: 1/2 and 4/5
    torch.testing.assert_close(feature_capacity(w), torch.tensor([0.5, 0.0, 0.8]))
    torch.testing.assert_close(feature_capacity(torch.zeros(3, 2)), torch.zeros(2))


def test_capacity_dtype_and_scale_invariance():
    w = torch.randn(7, 5, generator=torch.Generator().manual_seed(1))
    c = feature_capacity(w)
    assert c.dtype == torch.float32
    assert bool(((c > 0) & (c <= 1)).all())
    torch.testing.assert_close(feature_capacity(1e-6 * w), c)
    torch.testing.assert_close(feature_capacity(w.double()), c.double(), rtol=1e-5, atol=1e-6)


def test_capacity_validation():
    with pytest.raises(ValueError, match="weight"):
        feature_capacity(torch.ones(3))
    with pytest.raises(ValueError, match="weight"):
        feature_capacity(torch.ones(0, 3))
    with pytest.raises(ValueError, match="NaN"):
        feature_capacity(torch.tensor([[1.0, float("nan")]]))
    with pytest.raises(ValueError, match="eps"):
        feature_capacity(torch.ones(2, 2), eps=-1.0)
    with pytest.raises(ValueError, match="weight"):
        gram_matrix(torch.ones(2, 2, 2))


# ---------------------------------------------------------------- cosine


def test_cosine_hand_cases():
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [2.0, 0.0]])) == pytest.approx(1.0)
    assert mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [0.0, 3.0]])) == pytest.approx(0.0)
    anti = torch.tensor([[1.0, 1.0], [-2.0, -2.0]])
    assert mean_pairwise_cosine(anti) == pytest.approx(-1.0)
    assert mean_pairwise_cosine(anti, absolute=True) == pytest.approx(1.0)
    # rows e1, e2, -e1: pairs (0, -1, 0) -> mean -1/3, |.| mean 1/3
    three = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    assert mean_pairwise_cosine(three) == pytest.approx(-1 / 3)
    assert mean_pairwise_cosine(three, absolute=True) == pytest.approx(1 / 3)


def test_cosine_zero_rows_excluded_and_nan_rule():
    w = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    # only rows 0 and 2 count: cos = 1/sqrt(2)
    assert mean_pairwise_cosine(w) == pytest.approx(1 / math.sqrt(2))
    assert math.isnan(mean_pairwise_cosine(torch.tensor([[1.0, 2.0], [0.0, 0.0]])))
    assert math.isnan(mean_pairwise_cosine(torch.tensor([[1.0, 2.0]])))


def test_cosine_matches_bruteforce():
    w = torch.randn(9, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    cos = torch.nn.functional.cosine_similarity(w[:, None, :], w[None, :, :], dim=-1)
    iu = torch.triu_indices(9, 9, offset=1)
    pairs = cos[iu[0], iu[1]]
    assert mean_pairwise_cosine(w) == pytest.approx(pairs.mean().item())
    assert mean_pairwise_cosine(w, absolute=True) == pytest.approx(pairs.abs().mean().item())


def test_interference_metrics_keys_and_values():
    # rows e1, e2 (orthogonal features, orthogonal units)
    m = interference_metrics(torch.eye(2))
    assert m == pytest.approx(
        {"capacity_mean": 1.0, "capacity_sum": 2.0, "cosine_mean": 0.0, "cosine_abs_mean": 0.0}
    )
    m = interference_metrics(torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    assert m["capacity_mean"] == pytest.approx(0.65)
    assert m["cosine_mean"] == pytest.approx(1 / math.sqrt(2))


# ---------------------------------------------------------------- linear fit


def test_linear_fit_exact_line():
    x = [0.0, 1.0, 2.0, 3.0, 4.0]
    y = [3.0 - 2.0 * v for v in x]
    fit = linear_fit(x, y)
    assert fit["slope"] == pytest.approx(-2.0)
    assert fit["intercept"] == pytest.approx(3.0)
    assert fit["r2"] == pytest.approx(1.0)
    assert fit["n"] == 5


def test_linear_fit_hand_noisy_three_points():
    # x = (0,1,2), y = (0,2,1): xbar = ybar = 1, Sxy = 1, Sxx = 2
    # slope 1/2, intercept 1/2; residuals (-1/2, 1, -1/2) -> SS_res = 3/2, SS_tot = 2
    fit = linear_fit(torch.tensor([0.0, 1.0, 2.0]), torch.tensor([0.0, 2.0, 1.0]))
    assert fit["slope"] == pytest.approx(0.5)
    assert fit["intercept"] == pytest.approx(0.5)
    assert fit["r2"] == pytest.approx(0.25)
    assert fit["n"] == 3


def test_linear_fit_validation():
    with pytest.raises(ValueError, match="at least 2"):
        linear_fit([1.0], [2.0])
    with pytest.raises(ValueError, match="x values are equal"):
        linear_fit([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="same length"):
        linear_fit([1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="x"):
        linear_fit([[1.0, 2.0]], [[1.0, 2.0]])


# ---------------------------------------------------------------- collisions


def test_theory_formulas():
    assert collision_probability_theory(2, 2) == pytest.approx(1 / 8)
    assert collision_probability_theory(3, 4) == pytest.approx(1 / 1024)
    assert clause_coverage_theory(3, 2) == pytest.approx(1 / 4)
    assert clause_coverage_theory(1, 7) == pytest.approx(1.0)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("alpha", [2, 4])
def test_collision_mc_matches_theory(k, alpha):
    trials = 200_000
    p = collision_probability_theory(k, alpha)
    est = collision_probability_mc(k, alpha, trials=trials, seed=k * 10 + alpha)
    assert abs(est - p) < _tol(p, trials)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("alpha", [2, 4])
def test_coverage_mc_matches_theory(k, alpha):
    trials = 100_000
    p = clause_coverage_theory(k, alpha)
    est = clause_coverage_mc(k, alpha, trials=trials, seed=1)
    assert abs(est - p) < _tol(p, trials)


@pytest.mark.parametrize(("k", "alpha"), [(3, 2), (2, 4)])
def test_coverage_mc_balanced_matches_exact(k, alpha):
    n, trials = 48, 50_000
    exact = _balanced_same_child(k, alpha, n)  # e.g. k=3, a=2: 23/47 * 22/46
    est = clause_coverage_mc(k, alpha, n_vars=n, trials=trials, seed=3)
    assert abs(est - exact) < _tol(exact, trials)


def test_coverage_balanced_differs_from_independent():
    # k=3, alpha=2, n=48: exact 0.2340 vs independent 0.25; 4 SE ~ 0.0076 at 50k trials
    trials = 50_000
    est = clause_coverage_mc(3, 2, n_vars=48, trials=trials, seed=4)
    assert abs(est - clause_coverage_theory(3, 2)) > _tol(0.25, trials)


def test_collision_mc_balanced_matches_exact():
    n, trials = 48, 50_000
    exact = _balanced_same_child(4, 2, n)  # k=2 -> 4 variables, alpha=2
    est = collision_probability_mc(2, 2, n_vars=n, trials=trials, seed=5)
    assert abs(est - exact) < _tol(exact, trials)


def test_balanced_partition_with_n_equal_alpha_never_shares():
    # n_vars == alpha: every child gets exactly one variable
    assert clause_coverage_mc(2, 4, n_vars=4, trials=1000, seed=0) == 0.0


def test_mc_is_deterministic_given_seed():
    a = collision_probability_mc(2, 2, trials=5000, seed=7)
    b = collision_probability_mc(2, 2, trials=5000, seed=7)
    assert a == b
    a = clause_coverage_mc(2, 2, n_vars=10, trials=5000, seed=7)
    assert a == clause_coverage_mc(2, 2, n_vars=10, trials=5000, seed=7)


def test_probability_validation():
    with pytest.raises(ValueError, match="k"):
        collision_probability_theory(0, 2)
    with pytest.raises(ValueError, match="alpha"):
        clause_coverage_theory(2, 0)
    with pytest.raises(ValueError, match="alpha"):
        clause_coverage_theory(2, 2.0)
    with pytest.raises(ValueError, match="trials"):
        collision_probability_mc(2, 2, trials=0)
    with pytest.raises(ValueError, match="n_vars"):
        collision_probability_mc(3, 2, n_vars=5)  # needs 2k = 6 variables
    with pytest.raises(ValueError, match="seed"):
        clause_coverage_mc(2, 2, seed=1.5)


# ---------------------------------------------------------------- hidden weights


class _MaskedLinear(nn.Linear):
    """Stand-in for the library's masked layer: nn.Linear plus a weight_mask buffer."""

    def __init__(self, in_features: int, out_features: int, mask: torch.Tensor) -> None:
        super().__init__(in_features, out_features)
        self.register_buffer("weight_mask", mask)


class _MaskedModule(nn.Module):
    """A non-nn.Linear module with a 2-D weight and a weight_mask buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(2, 3))
        self.register_buffer("weight_mask", torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))


def test_hidden_weights_masks_and_drops_last():
    mask = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    model = nn.Sequential(
        _MaskedLinear(2, 3, mask),
        nn.ReLU(),
        nn.Linear(3, 4),
        nn.ReLU(),
        nn.Linear(4, 1),
    )
    out = hidden_weights(model)
    assert [name for name, _ in out] == ["0", "2"]
    torch.testing.assert_close(out[0][1], model[0].weight.detach() * mask)
    assert (out[0][1][mask == 0] == 0).all()
    torch.testing.assert_close(out[1][1], model[2].weight.detach())
    # detached copies
    assert not out[0][1].requires_grad
    out[1][1].zero_()
    assert model[2].weight.abs().sum() > 0


def test_hidden_weights_custom_masked_module_and_edge_cases():
    model = nn.Sequential(_MaskedModule(), nn.Linear(2, 1))
    (name, w), = hidden_weights(model)
    assert name == "0"
    torch.testing.assert_close(w, torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
    assert hidden_weights(nn.Linear(3, 2)) == []
    with pytest.raises(ValueError, match="model"):
        hidden_weights("not a module")  # type: ignore[arg-type]
    bad = nn.Sequential(_MaskedLinear(2, 3, torch.ones(2, 2)), nn.Linear(3, 1))
    with pytest.raises(ValueError, match="weight_mask"):
        hidden_weights(bad)


def test_hidden_weights_torch_prune_not_double_masked():
    # torch's prune already sets weight = weight_orig * weight_mask; a
    # non-binary mask makes a second multiplication detectable.
    lin = nn.Linear(3, 3)
    prune.custom_from_mask(lin, "weight", 2.0 * torch.eye(3))
    out = hidden_weights(nn.Sequential(lin, nn.Linear(3, 1)))
    expected = 2.0 * torch.diag(torch.diagonal(lin.weight_orig.detach()))
    torch.testing.assert_close(out[0][1], expected)
