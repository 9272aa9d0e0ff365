"""The real-model experiments (heads, deep, cnn) and their studies end to end on tiny data."""

import csv

import numpy as np
import pytest
import torch

from torchfpe.core.layouts import MaskedLinear
from torchfpe.data import write_embeddings, write_idx
from torchfpe.data.idx import FASHION_MNIST_FILES
from torchfpe.lab.experiments import cnn, deep, heads, protocol
from torchfpe.lab.experiments.studies import groups, study_configs

GROUPS = groups()

NAME = "tiny clusters (test stand-in)"


@pytest.fixture(scope="module")
def embedding_file(tmp_path_factory):
    """6 classes as Gaussian clusters in 12 dimensions: 30 training and 10 test examples per class."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(6, 12)) * 2

    def draw(per_class):
        y = np.repeat(np.arange(6), per_class)
        return (centres[y] + rng.normal(size=(len(y), 12))).astype(np.float32), y

    (x_train, y_train), (x_test, y_test) = draw(30), draw(10)
    path = tmp_path_factory.mktemp("emb") / "tiny.npz"
    write_embeddings(path, x_train, y_train, x_test, y_test, [f"c{i}" for i in range(6)], name=NAME,
                     note="test clusters", standin=True)
    return str(path)


@pytest.fixture(scope="module")
def fashion_dir(tmp_path_factory):
    """Fashion-MNIST-shaped IDX files: 60 training and 20 test images, labels 0..9."""
    folder = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(1)
    for split, count in (("train", 60), ("test", 20)):
        labels = np.arange(count) % 10
        images = rng.integers(0, 60, size=(count, 28, 28)).astype(np.uint8)
        images[:, 2 * labels % 28, :] = 255  # a label-dependent bright row, so something is learnable
        stem = "train" if split == "train" else "t10k"
        write_idx(folder / FASHION_MNIST_FILES[f"{split}_images"], images)
        write_idx(folder / FASHION_MNIST_FILES[f"{split}_labels"], labels.astype(np.uint8))
        assert FASHION_MNIST_FILES[f"{split}_images"].startswith(stem)
    return str(folder)


TINY = dict(warmup_epochs=3, epochs_after=3, batch_size=64)


def test_heads_records_budget_and_controls(embedding_file):
    variants = "dense+random+feature+overlap+dropconnect+static_sparse+wide2"
    records = heads.EXPERIMENT.run_batch([heads.EXPERIMENT.make_config(embeddings=embedding_file, neurons=4, alpha=2, variants=variants,
                                                 seed=s, **TINY) for s in range(2)])
    assert [r["variant"] for r in records[::2]] == variants.split("+")
    parent = 4 * (12 + 1) + 6 * (4 + 1)
    for record in records:
        assert {"variant", "seed", "test_accuracy", "neurons", "alpha", "dataset"} <= set(record)
        assert record["dataset"] == NAME and record["neurons"] == 4 and record["n_classes"] == 6
        assert 0.0 <= record["test_accuracy"] <= 1.0
        if record["variant"] == "wide2":
            assert record["hidden_units"] == 8 and record["nonzero_parameters"] == 8 * 13 + 6 * 9
        else:
            assert record["nonzero_parameters"] == parent, record["variant"]
    units = {r["variant"]: r["hidden_units"] for r in records}
    assert units["dense"] == units["dropconnect"] == 4
    assert units["random"] == units["feature"] == units["overlap"] == units["static_sparse"] == 8
    dense = {r["seed"]: r["test_accuracy"] for r in records if r["variant"] == "dense"}
    for record in records:
        assert record["relative_gain"] == pytest.approx((record["test_accuracy"] - dense[record["seed"]])
                                                        / dense[record["seed"]])


def test_heads_stacks_agree_with_one_model_at_a_time(embedding_file):
    fields = dict(embeddings=embedding_file, neurons=3, alpha=3, variants="dense+random+feature+wide1.5",
                  dtype="float64", **TINY)
    batch = heads.EXPERIMENT.run_batch([heads.EXPERIMENT.make_config(**fields, seed=s) for s in (0, 1)])
    single = heads.EXPERIMENT.run_single(heads.EXPERIMENT.make_config(**fields, seed=1))
    batch = [r for r in batch if r["seed"] == 1]
    assert [r["variant"] for r in batch] == [r["variant"] for r in single]
    for a, b in zip(batch, single):
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"], abs=1e-9)
        assert a["capacity_mean"] == pytest.approx(b["capacity_mean"], rel=1e-6)


def test_heads_class_subset_and_bad_configs(embedding_file):
    records = heads.EXPERIMENT.run_batch([heads.EXPERIMENT.make_config(embeddings=embedding_file, classes=3, variants="dense+random",
                                                 **TINY)])
    assert all(r["n_classes"] == 3 for r in records)
    with pytest.raises(ValueError, match="classes=9"):
        heads.EXPERIMENT.run_batch([heads.EXPERIMENT.make_config(embeddings=embedding_file, classes=9, **TINY)])
    for bad, word in (({"variants": "dense+clause"}, "variants"), ({"alpha": 1}, "alpha"),
                      ({"neurons": 0}, "neurons"), ({"bogus": 1}, "unknown")):
        with pytest.raises(ValueError, match=word):
            heads.EXPERIMENT.make_config(**bad)


def test_deep_expands_every_hidden_layer(embedding_file):
    config = deep.EXPERIMENT.make_config(embeddings=embedding_file, neurons=4, alpha=2, variants="dense+random", **TINY)
    records = deep.EXPERIMENT.run_batch([config])
    assert [r["depth"] for r in records] == [4, 4]
    assert records[0]["nonzero_parameters"] == records[1]["nonzero_parameters"]
    model = protocol.build_variant(heads.TASK, config, "random", heads.TASK.parent(config),
                                   heads.TASK.data(config))
    masked = [m for m in model.modules() if isinstance(m, MaskedLinear)]
    assert [m.out_features for m in masked] == [8, 8, 8, 8, 6]
    with pytest.raises(ValueError, match="alpha"):
        deep.EXPERIMENT.make_config(neurons=2, alpha=4)


def test_cnn_expands_only_the_head_and_keeps_the_budget(fashion_dir):
    config = cnn.EXPERIMENT.make_config(data_dir=fashion_dir, train_size=None, neurons=4, alpha=2, warmup_epochs=1,
                             epochs_after=1, batch_size=32, variants="dense+random+static_sparse")
    records = cnn.EXPERIMENT.run_batch([config])
    assert [r["variant"] for r in records] == ["dense", "random", "static_sparse"]
    assert len({r["nonzero_parameters"] for r in records}) == 1
    assert [r["hidden_units"] for r in records] == [4, 8, 8]
    assert records[0]["dataset"] == "Fashion-MNIST images" and records[0]["train_examples"] == 60
    model = protocol.build_variant(cnn.TASK, config, "random", cnn.TASK.parent(config), cnn.TASK.data(config))
    assert [name for name, m in model.named_modules() if isinstance(m, MaskedLinear)] == ["head.0", "head.2"]
    subset = cnn.prepared_data(fashion_dir, 30, "float32")
    assert subset.info["name"] == "Fashion-MNIST images (30-example training subset)"


@pytest.mark.parametrize("group, study", [(g, s) for g in ("heads", "deep", "cnn") for s in GROUPS[g]])
def test_each_study_end_to_end(group, study, embedding_file, fashion_dir, tmp_path):
    from torchfpe.lab import api

    chosen = GROUPS[group][study]
    overrides = dict(warmup_epochs=1, epochs_after=1)
    if group == "cnn":
        overrides.update(data_dir=fashion_dir, train_size=None, neurons=[4, 8])
    else:
        overrides.update(embeddings=embedding_file, batch_size=64)
        for axis, values in chosen.axes.items():
            overrides[axis] = {"neurons": [2, 4], "alpha": [2], "classes": [3, 6]}[axis]
    configs = study_configs(chosen, 2, overrides)
    report = api.run_study(group, study, seeds=2, overrides=overrides, out=tmp_path, backend="local", quiet=True)
    text = report.read_text()
    dataset = "Fashion-MNIST images" if group == "cnn" else NAME
    captions = [line for line in text.splitlines() if line.startswith("**Table")]
    assert captions and all(dataset in line for line in captions)
    assert "no paper numbers are shown" in text  # stand-ins never get the paper's CLIP numbers
    with open(tmp_path / "records.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert {"variant", "seed", "test_accuracy", "neurons", "alpha", "dataset"} <= set(rows[0])
    assert len(rows) == len(configs) * len(configs[0]["variants"].split("+"))
    if chosen.meta["page"] == "match":
        assert "Smallest dense model that reaches FPE" in text
    assert (tmp_path / "gain_vs_neurons.png").is_file() or (tmp_path / "gain_vs_classes.png").is_file()


def test_real_model_studies_have_pages_and_fit_the_registry():
    from torchfpe.lab.experiments.registry import experiment
    from torchfpe.lab.report.pages import PAGES

    for group in ("heads", "deep", "cnn"):
        for study in GROUPS[group].values():
            assert study.group == group and study.meta["page"] in PAGES
            experiment(study.experiment).make_config(**study_configs(study, 1)[0])  # every default grid point is a valid config


def _records(dataset, standin, gains=(0.10, 0.20, 0.30)):
    """dense at 0.5 and random at 0.5 * (1 + gain) for seeds 0..2, alpha 2 and 4, neurons 4."""
    out = []
    for alpha in (2, 4):
        for seed, gain in enumerate(gains):
            base = dict(embeddings="x", neurons=4, alpha=alpha, seed=seed, variants="dense+random",
                        dataset=dataset, standin=standin, nonzero_parameters=100)
            out.append({**base, "variant": "dense", "test_accuracy": 0.5, "relative_gain": 0.0, "hidden_units": 4})
            out.append({**base, "variant": "random", "test_accuracy": 0.5 * (1 + gain), "relative_gain": gain,
                        "hidden_units": 8})
    return out


def test_report_shows_paper_numbers_only_for_the_papers_data_set(tmp_path):
    HEADS = GROUPS["heads"]
    from torchfpe.lab.report import write_report

    meta = {"study": "width", "axis": ["neurons", "alpha"], "seeds": 3, "base": {"embeddings": "x", "neurons": 4,
            "alpha": 2, "variants": "dense+random", "seed": 0}, **HEADS["width"].meta}
    text = write_report(tmp_path / "a", meta, _records("CLIP ViT-B/32 embeddings of CIFAR-100", False)).read_text()
    assert "The paper's numbers on the same data set" in text
    row = next(line for line in text.splitlines() if line.startswith("| CLIP ViT-B/32 embeddings of CIFAR-100 | random | 2 |"))
    assert "+97.4" in row and "+20.0 ± 10.0" in row  # paper's gain and ours (mean ± std of 10, 20, 30 %)
    for name, standin in (("CLIP CIFAR-100 (stand-in)", True), ("autoencoder CIFAR-100", False)):
        text = write_report(tmp_path / name[:4], meta, _records(name, standin)).read_text()
        assert "no paper numbers are shown" in text and "+97.4" not in text


def test_runs_pair_within_a_data_set_only(tmp_path):
    HEADS = GROUPS["heads"]
    from torchfpe.lab.report import write_report

    meta = {"study": "width", "axis": ["neurons"], "seeds": 3, "base": {"embeddings": "x", "neurons": 4, "alpha": 2,
            "variants": "dense+random", "seed": 0}, **HEADS["width"].meta}
    records = _records("set A", True) + _records("set B", True, gains=(0.0, 0.0, 0.01))
    text = write_report(tmp_path, meta, records).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| set ") and "| random |" in line]
    assert len(rows) == 2  # one row per data set: the data set is a cell axis
    assert "| 6 |" in rows[0]  # 3 seeds × 2 alphas, never pooled with set B
    assert "+20.0 ± 8.9" in rows[0] and "+0.3 ± 0.5" in rows[1]


def test_correlation_split_groups_correlated_inputs():
    from torchfpe.core import expand

    g = torch.Generator().manual_seed(0)
    sources = torch.randn(500, 2, generator=g)
    # inputs 0, 2, 4 follow source 0 and inputs 1, 3, 5 source 1 (plus a little noise)
    x = sources[:, [0, 1, 0, 1, 0, 1]] + 0.05 * torch.randn(500, 6, generator=g)
    from torchfpe.core.splits import correlation_split

    ids = correlation_split(torch.zeros(3, 6), 2, torch.Generator().manual_seed(1), data=x)
    assert ids[0] == ids[2] == ids[4] and ids[1] == ids[3] == ids[5] and ids[0] != ids[1]
    parent = torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    model = expand(parent, 2, split="correlation", data=x, seed=0, budget="none")
    masks = model[0].weight_mask.reshape(3, 2, 6)
    assert torch.equal(masks.sum(dim=1), torch.ones(3, 6, dtype=masks.dtype))  # disjoint and covering


def test_correlation_variant_runs_in_heads_and_deep(embedding_file):
    for module, extra in ((heads, {}), (deep, {"depth": 2})):
        records = module.EXPERIMENT.run_batch([module.EXPERIMENT.make_config(embeddings=embedding_file, neurons=4, alpha=2,
                                                       variants="dense+correlation", **TINY, **extra)])
        assert [r["variant"] for r in records] == ["dense", "correlation"]
        assert records[0]["nonzero_parameters"] == records[1]["nonzero_parameters"]
        assert records[1]["hidden_units"] == 8


def test_check_config_fails_on_bad_data_before_any_run(tmp_path, embedding_file):
    from torchfpe.data import DataError

    with pytest.raises(DataError, match="missing.npz"):
        heads.EXPERIMENT.check_config(heads.EXPERIMENT.make_config(embeddings=str(tmp_path / "missing.npz")))
    with pytest.raises(ValueError, match="classes=9"):
        deep.EXPERIMENT.check_config(deep.EXPERIMENT.make_config(embeddings=embedding_file, classes=9))
    with pytest.raises(DataError, match="Fashion-MNIST"):
        cnn.EXPERIMENT.check_config(cnn.EXPERIMENT.make_config(data_dir=str(tmp_path / "nowhere")))


def test_heads_and_deep_default_to_real_features_and_old_run_keys_stand():
    from torchfpe.lab.sweep import config_key

    assert heads.HeadsConfig().embeddings == deep.DeepConfig().embeddings == "fashion-mnist-efficientnet"
    # keys computed by the code before steps_per_epoch existed (main at e73ad15): stored runs stay valid
    old = [("heads", heads.HeadsConfig(embeddings="fashion-mnist-ae"), "9704a90502c2d7c61ad10281"),
           ("heads", heads.HeadsConfig(embeddings="synthetic-100", classes=25, neurons=8, alpha=4, batch_size=256,
                                       warmup_epochs=20, epochs_after=20, variants="dense+random", seed=2),
            "d00276e420217642b424b7a5"),
           ("deep", deep.DeepConfig(embeddings="fashion-mnist-ae", neurons=16, alpha=4, seed=1), "8932becfbd638d73bfb0ff6a")]
    for experiment, config, key in old:
        assert "steps_per_epoch" not in config.to_dict()
        assert config_key(experiment, config.to_dict()) == key
    fixed = heads.HeadsConfig(embeddings="fashion-mnist-ae", steps_per_epoch=30)
    assert fixed.to_dict()["steps_per_epoch"] == 30 and config_key("heads", fixed.to_dict()) != old[0][2]
    with pytest.raises(ValueError, match="steps_per_epoch"):
        heads.HeadsConfig(steps_per_epoch=0)


def test_steps_per_epoch_holds_the_step_count_across_class_subsets(embedding_file):
    # 30 training examples per class, minibatches of 16: 2 classes are 4 steps a pass, 4 classes 8, 6 classes 12.
    # 2 + 1 epochs of 12 steps = 24 + 12 steps: 6 + 3 passes, 3 + 1.5 (rounds up to 2) passes, 2 + 1 passes.
    fields = dict(embeddings=embedding_file, neurons=4, alpha=2, variants="dense+random", batch_size=16,
                  warmup_epochs=2, epochs_after=1, steps_per_epoch=12, dtype="float64")
    expected = {2: (6, 3, 24, 12), 4: (3, 2, 24, 16), 6: (2, 1, 24, 12)}
    for classes, (warm, after, warm_steps, steps_after) in expected.items():
        records = heads.EXPERIMENT.run_batch([heads.EXPERIMENT.make_config(**fields, classes=classes, seed=s) for s in (0, 1)])
        for record in records:
            assert (record["warmup_passes"], record["passes_after"]) == (warm, after), classes
            assert (record["warmup_steps"], record["steps_after"]) == (warm_steps, steps_after), classes
            assert (record["warmup_epochs"], record["epochs_after"], record["steps_per_epoch"]) == (2, 1, 12)  # as asked
            assert record["train_examples"] == 30 * classes
    # the scheduled run is the plain run of that many passes, in the stacks and one model at a time
    scheduled = heads.EXPERIMENT.run_single(heads.EXPERIMENT.make_config(**fields, classes=2, seed=1))
    as_passes = {**fields, "steps_per_epoch": None, "warmup_epochs": 6, "epochs_after": 3}
    plain = heads.EXPERIMENT.run_batch([heads.EXPERIMENT.make_config(**as_passes, classes=2, seed=s) for s in (0, 1)])
    plain = [r for r in plain if r["seed"] == 1]
    assert [r["test_accuracy"] for r in scheduled] == pytest.approx([r["test_accuracy"] for r in plain], abs=1e-9)
    assert "steps_per_epoch" not in plain[0] and plain[0]["warmup_steps"] == 24  # without the field: steps grow with the subset
    deep_records = deep.EXPERIMENT.run_batch([deep.EXPERIMENT.make_config(**fields, classes=2, depth=2)])
    assert deep_records[0]["warmup_passes"] == 6 and deep_records[0]["depth"] == 2


def test_real_feature_set_names_are_not_data_files(fashion_dir):
    from pathlib import Path

    # run keys hold a file's path and the store digests the files a config names: a built-in name is no file
    assert heads.TASK.files(heads.HeadsConfig()) == ()
    assert heads.TASK.files(deep.DeepConfig(embeddings="font-chars-efficientnet:100/50")) == ()
    named = heads.TASK.files(heads.HeadsConfig(embeddings="fashion-mnist-efficientnet:20", data_dir=fashion_dir))
    assert sorted(Path(p).name for p in named) == sorted(FASHION_MNIST_FILES.values())  # the IDX files it reads
    assert heads.TASK.files(heads.HeadsConfig(embeddings="mine.npz")) == ("mine.npz",)


def test_cnn_counts_dead_head_units():
    model = cnn.cnn(4, seed=0, dtype="float32")
    with torch.no_grad():
        model.head[0].bias.copy_(torch.tensor([-1e4, 1e4, -1e4, 1e4]))  # units 0 and 2 never fire, 1 and 3 always
    x = torch.rand(7, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    assert cnn.dead_units(model, x, chunk=3) == 2
    assert model.training  # the mode is restored


def test_stacked_seeds_share_one_copy_of_the_data(embedding_file, monkeypatch):
    # the seeds of a heads config read the same features: the stacks must see views of one tensor, not
    # one copy per model (15 copies of the 60000 x 1280 real features are 4.6 GB)
    seen = []
    real_fit = protocol.fit_stacked

    def spy(stack, x, y, *args, **kwargs):
        seen.append((x.stride(0), y.stride(0), x.shape[0]))
        return real_fit(stack, x, y, *args, **kwargs)

    monkeypatch.setattr(protocol, "fit_stacked", spy)
    configs = [heads.EXPERIMENT.make_config(embeddings=embedding_file, neurons=4, variants="dense+random+feature",
                                            seed=s, **TINY) for s in range(3)]
    records = heads.EXPERIMENT.run_batch(configs)
    assert [shape for _, _, shape in seen] == [3, 3, 6]  # warm-up, dense's T2, random and feature together
    assert all(x == 0 and y == 0 for x, y, _ in seen)
    assert len(records) == 9
