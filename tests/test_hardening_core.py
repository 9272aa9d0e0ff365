"""Defects 3, 4 and 9 of issue 9 in the core, and the one validation layer's contract."""

import warnings

import pytest
import torch
from torch import nn

from torchfpe import InvalidParameterError, expand, nonzero_parameters
from torchfpe.core.validation import Interval, Options, Sequences, check_param


def mlp(sizes=(8, 6, 4, 1)):
    torch.manual_seed(0)
    layers = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


# --------------------------------------------------------------------------- one validation layer
@pytest.mark.parametrize("kwargs, message", [
    ({"alpha": 2.5}, "the 'alpha' parameter of expand must be an int >= 2; got 2.5"),
    ({"alpha": 1}, "the 'alpha' parameter of expand must be an int >= 2; got 1"),
    ({"alpha": 2, "bias": "half"}, "the 'bias' parameter of expand must be one of 'copy', 'divide', 'zero'; got 'half'"),
    ({"alpha": 2, "dropconnect_p": 1.0}, "the 'dropconnect_p' parameter of expand must be a finite float in [0.0, 1.0) or None; got 1.0"),
    ({"alpha": 2, "seed": 2**64}, "the 'seed' parameter of expand must be an int in [0, 2**64 - 1] or None; got 18446744073709551616"),
    ({"alpha": 2, "layers": "02"}, "the 'layers' parameter of expand must be a non-empty list of layer paths (not a single string) or None; got '02'"),
    ({"alpha": 7}, "the 'alpha' parameter of expand must be an int in [2, 6]"),
])
def test_one_message_format_and_one_error_type(kwargs, message):
    with pytest.raises(InvalidParameterError) as info:
        expand(mlp(), **kwargs)
    assert str(info.value).startswith(message)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TypeError)


def test_constraints_compose():
    allowed = [Interval(int, 1), None]
    assert check_param("n", None, allowed, "f") is None and check_param("n", 3, allowed, "f") == 3
    for bad in (0, True, 2.0, "3"):
        with pytest.raises(InvalidParameterError, match="the 'n' parameter of f must be an int >= 1 or None"):
            check_param("n", bad, allowed, "f")
    with pytest.raises(InvalidParameterError, match="finite float > 0"):
        check_param("lr", float("inf"), [Interval(float, 0, None, closed="neither")], "TrainSettings")
    with pytest.raises(InvalidParameterError):
        check_param("mode", 1, [Options((True, "a"))], "f")
    assert check_param("xs", [1, 2], [Sequences((int,), 1)], "f") == [1, 2]
    with pytest.raises(InvalidParameterError, match="non-empty list"):
        check_param("xs", [], [Sequences((int,), 1)], "f")


# -------------------------------------------------------------------------------- defect 3: tied
def test_a_layer_used_twice_is_refused():
    shared = nn.Linear(6, 6)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(6, 1))
    with pytest.raises(InvalidParameterError, match="shared"):
        expand(model, 2, seed=0)


def test_tied_weights_are_refused():
    tied = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 1))
    tied[2].weight = tied[0].weight
    with pytest.raises(InvalidParameterError, match="tied"):
        expand(tied, 2, seed=0)


# ------------------------------------------------------------------------------ defect 4: frozen
def test_frozen_layers_stay_frozen_and_the_report_says_so():
    model = mlp()
    for p in model[0].parameters():
        p.requires_grad_(False)
    wide, report = expand(model, 2, seed=0, return_report=True)
    assert not wide[0].weight.requires_grad and not wide[0].bias.requires_grad
    assert wide[2].weight.requires_grad and wide[4].weight.requires_grad
    assert [c.name for c in report.layers if c.frozen] == ["0"]
    assert "frozen=0" in str(report)


# --------------------------------------------------------------------------- defect 9: unchecked
def test_split_callable_masks_must_partition():
    def overlapping(weight, alpha, generator):
        return torch.ones(weight.shape[0], alpha, weight.shape[1], dtype=torch.bool)

    def missing(weight, alpha, generator):
        masks = torch.zeros(weight.shape[0], alpha, weight.shape[1], dtype=torch.bool)
        masks[:, 0, 1:] = True
        return masks

    for fn, count in ((overlapping, 2), (missing, 0)):
        with pytest.raises(InvalidParameterError, match=f"partition.*is in {count} children"):
            expand(mlp(), 2, split=fn, seed=0)


def test_layers_must_be_a_list_not_a_string():
    with pytest.raises(InvalidParameterError, match="'layers'"):
        expand(mlp(), 2, layers="02")
    assert [c.name for c in expand(mlp(), 2, layers=["0", "2"], seed=0, return_report=True)[1].layers] == ["0", "2", "4"]


def test_budget_that_ends_below_the_parent_says_so():
    model = mlp((8, 6, 1))
    with pytest.warns(UserWarning, match="below the parent"):
        wide, report = expand(model, 2, seed=0, bias="zero", budget="layerwise", return_report=True)
    assert report.excess == -6 and nonzero_parameters(wide) == nonzero_parameters(model) - 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        expand(model, 2, seed=0)  # the default keeps the budget exactly, silently


def test_lazy_and_meta_layers_are_refused():
    lazy = nn.Sequential(nn.LazyLinear(6), nn.ReLU(), nn.Linear(6, 1))
    with pytest.raises(InvalidParameterError, match="uninitialised lazy layer"):
        expand(lazy, 2, seed=0)
    lazy(torch.randn(2, 8))  # materialised: now it works
    assert nonzero_parameters(expand(lazy, 2, seed=0)) == nonzero_parameters(lazy)
    with torch.device("meta"):
        meta = mlp()
    with pytest.raises(InvalidParameterError, match="meta device"):
        expand(meta, 2, seed=0)


@pytest.mark.parametrize("seed", [2**64, -1, 1.5])
def test_seeds_beyond_64_bits_are_refused(seed):
    with pytest.raises(InvalidParameterError, match="'seed'"):
        expand(mlp(), 2, seed=seed)
    expand(mlp(), 2, seed=2**64 - 1)


# ------------------------------------------------------------------ issue 13 B1: frozen and the budget
def _frozen_first_layer():
    model = mlp()
    model[0].requires_grad_(False)
    return model


@pytest.mark.parametrize("budget", ["global", "outgoing", "layerwise", "structured"])
def test_frozen_layers_stay_unpruned_and_the_trainable_count_holds(budget):
    model = _frozen_first_layer()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the budget can be met among the trainable layers: no warning
        wide, report = expand(model, 2, seed=0, budget=budget, return_report=True)
    # the frozen split layer keeps every weight its children received (a partition: the parent's 48)
    assert int(torch.count_nonzero(wide[0].weight)) == int(torch.count_nonzero(model[0].weight)) == 48
    assert nonzero_parameters(wide) == nonzero_parameters(model)
    assert report.excess == 0


def test_a_budget_that_only_frozen_layers_could_meet_warns():
    model = mlp()
    model[4].requires_grad_(False)  # budget='outgoing' prunes only the copied columns: layer 4's are frozen
    with pytest.warns(UserWarning, match="frozen"):
        wide = expand(model, 2, seed=0, layers=["2"], budget="outgoing")
    assert int(torch.count_nonzero(wide[4].weight)) == 2 * int(torch.count_nonzero(model[4].weight))


# ------------------------------------------------------- issue 13 B3: load_expanded keeps the parent's dtype
@pytest.mark.parametrize("packed", [False, True])
def test_load_expanded_keeps_the_parents_dtype(packed):
    import torchfpe
    import torchfpe.data
    import torchfpe.metrics

    parent = mlp()
    wide = expand(parent, 2, seed=0)
    saved = (torchfpe.pack(wide) if packed else wide).state_dict()  # float32
    loaded = torchfpe.load_expanded(mlp().double(), saved)
    floats = {name: t.dtype for name, t in loaded.state_dict().items()
              if isinstance(t, torch.Tensor) and t.is_floating_point()}
    assert set(floats.values()) == {torch.float64}, floats
    x = torch.randn(5, 8)
    torch.testing.assert_close(loaded(x.double()), wide(x).double(), rtol=1e-5, atol=1e-6)


# -------------------------------------------------------- issue 13 B8: numpy integers wherever seeds are taken
def test_numpy_integer_seeds_are_accepted_everywhere_and_equal_python_ints():
    np = pytest.importorskip("numpy")
    import torchfpe
    import torchfpe.data
    import torchfpe.metrics
    from torchfpe.lab.experiments.boolean import BooleanConfig
    from torchfpe.tasks.dnf import DNFConfig, make_dnf

    model = mlp()

    def same(a, b):
        return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values())
                   if isinstance(x, torch.Tensor))

    assert same(expand(model, np.int64(2), seed=np.int64(3)), expand(model, 2, seed=3))
    assert same(expand(model, 2, seed=np.uint32(3)), expand(model, 2, seed=3))
    dnf = make_dnf(DNFConfig(seed=np.int64(3), train_size=np.int32(8), test_size=8))
    assert torch.equal(dnf.x_train, make_dnf(DNFConfig(seed=3, train_size=8, test_size=8)).x_train)
    config = BooleanConfig(seed=np.int64(3), neurons=np.int64(8))
    assert type(config.seed) is int and type(config.neurons) is int and config == BooleanConfig(seed=3, neurons=8)
    assert torchfpe.metrics.clause_coverage_mc(2, 2, trials=50, seed=np.int64(1)) == \
        torchfpe.metrics.clause_coverage_mc(2, 2, trials=50, seed=1)
    pytest.importorskip("sklearn")
    digits = torchfpe.data.load_embeddings("digits", seed=np.int64(1))
    assert torch.equal(digits.x_train, torchfpe.data.load_embeddings("digits", seed=1).x_train)
    with pytest.raises(InvalidParameterError, match="seed"):
        expand(model, 2, seed=np.float64(3))


def test_nonzero_parameters_refuses_what_is_not_a_module():
    with pytest.raises(InvalidParameterError, match="the 'model' parameter of nonzero_parameters must be a Module"):
        nonzero_parameters(None)


# ------------------------------------------------------------ issue 13 B8: a bad target_modules, one clear error
class _Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 6)


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.mlp = _Block()


@pytest.mark.parametrize("target_modules, words", [
    ("(", "must be a valid regular expression on the full module path (missing ), unterminated subpattern"),
    (3, "got 3"), ([3], "got [3]"), (["fc1", None], "got ['fc1', None]"), (b"fc", "got bytes b'fc'"),
    ({"fc1": 1}, "got {'fc1': 1}"), ([["fc1"]], "got [['fc1']]"), ([], "got []"),
])
def test_a_bad_target_modules_is_one_clear_error(target_modules, words):
    from torchfpe import find_ffn_pairs

    with pytest.raises(InvalidParameterError, match="'target_modules' parameter of find_ffn_pairs") as error:
        find_ffn_pairs(_Net(), target_modules)
    assert words in str(error.value)
    assert find_ffn_pairs(_Net(), ["fc1"]) == find_ffn_pairs(_Net(), r"mlp\.fc\d") == [("mlp.fc1", "mlp.fc2")]
    with pytest.raises(InvalidParameterError, match="'model' parameter of find_ffn_pairs"):
        find_ffn_pairs(None)
