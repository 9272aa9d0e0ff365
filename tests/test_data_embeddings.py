"""The embedding-file loader: good .npz and Parquet files load; each bad one fails with the file's name."""

import numpy as np
import pytest
import torch

from torchfpe.data import EmbeddingFileError, EmbeddingSet, load_embeddings, write_embeddings


def good_arrays(seed=0, classes=3, dim=5):
    rng = np.random.default_rng(seed)
    y_train = np.repeat(np.arange(classes), 4)
    y_test = np.arange(classes)
    return dict(X_train=rng.normal(size=(len(y_train), dim)), y_train=y_train,
                X_test=rng.normal(size=(len(y_test), dim)), y_test=y_test)


def test_npz_round_trip_with_class_names(tmp_path):
    arrays = good_arrays()
    path = tmp_path / "emb.npz"
    np.savez(path, **arrays, class_names=np.array(["ant", "bee", "cow"]))
    data = load_embeddings(path)
    assert isinstance(data, EmbeddingSet)
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64
    assert data.x_train.shape == (12, 5) and data.x_test.shape == (3, 5) and data.dim == 5
    np.testing.assert_allclose(data.x_train.numpy(), arrays["X_train"].astype(np.float32))
    assert data.class_names == ["ant", "bee", "cow"] and data.num_classes == 3
    assert data.name == "emb.npz" and not data.standin and str(path) in data.note


def test_sparse_labels_are_remapped_with_their_names(tmp_path):
    arrays = good_arrays()
    arrays["y_train"] = np.array([7, 3, 9])[arrays["y_train"]]
    arrays["y_test"] = np.array([9, 3, 3])
    path = tmp_path / "sparse.npz"
    names = np.array([f"class{i}" for i in range(10)])
    np.savez(path, **arrays, class_names=names)
    data = load_embeddings(path)
    assert data.class_names == ["class3", "class7", "class9"]
    assert data.y_train.tolist() == [1] * 4 + [0] * 4 + [2] * 4 and data.y_test.tolist() == [2, 0, 0]
    assert load_embeddings(_without(path, "class_names", tmp_path)).class_names == ["3", "7", "9"]


def _without(path, key, tmp_path):
    with np.load(path) as data:
        kept = {k: data[k] for k in data.files if k != key}
    out = tmp_path / f"no-{key}.npz"
    np.savez(out, **kept)
    return out


def _bad(**changes):
    arrays = good_arrays()
    for key, value in changes.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    return arrays


BAD_NPZ = {
    "missing key": (_bad(y_test=None), r"missing arrays \['y_test'\]"),
    "width mismatch": (_bad(X_test=np.zeros((3, 4))), "X_train has 5 features but X_test has 4"),
    "row mismatch": (_bad(y_train=np.zeros(11, dtype=int)), "y_train has 11 labels but X_train has 12 rows"),
    "float labels": (_bad(y_train=np.repeat(np.arange(3.0), 4)), "y_train must hold integer labels"),
    "negative label": (_bad(y_test=np.array([0, -1, 2])), "y_test has negative labels"),
    "nan": (_bad(X_train=np.where(np.eye(12, 5) > 0, np.nan, 1.0)), "X_train has NaN or infinite values in 5 rows"),
    "inf": (_bad(X_test=np.full((3, 5), np.inf)), "X_test has NaN or infinite"),
    "too big for float32": (_bad(X_test=np.full((3, 5), 1e300)), "X_test has values too large for float32 in 3 rows"),
    "1-D features": (_bad(X_train=np.zeros(12)), "X_train must be 2-D"),
    "strings": (_bad(X_train=np.full((12, 5), "a")), "X_train must hold real numbers"),
    "one class": (_bad(y_train=np.zeros(12, dtype=int), y_test=np.zeros(3, dtype=int)), "needs at least 2 classes in y_train; found 1"),
    "lonely class": (_bad(y_train=np.array([0] * 6 + [1] * 5 + [2])), "every class needs at least 2 training examples; 1 of 3 classes have fewer"),
    "unseen test class": (_bad(y_test=np.array([0, 1, 5])), r"y_test has labels never seen in y_train: \[5\]"),
    "empty test": (_bad(X_test=np.zeros((0, 5)), y_test=np.zeros(0, dtype=int)), "X_test is empty"),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_bad_npz_names_the_file_and_the_problem(tmp_path, case):
    arrays, message = BAD_NPZ[case]
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    before = sorted(tmp_path.iterdir())
    with pytest.raises(EmbeddingFileError, match=f"bad.npz: {message}"):
        load_embeddings(path)
    assert sorted(tmp_path.iterdir()) == before


def test_other_bad_sources(tmp_path):
    with pytest.raises(EmbeddingFileError, match="nope.npz: no such file, and not a built-in"):
        load_embeddings(tmp_path / "nope.npz")
    (tmp_path / "data.csv").write_text("1,2\n")
    with pytest.raises(EmbeddingFileError, match="data.csv: unknown embedding file type .csv"):
        load_embeddings(tmp_path / "data.csv")
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip")
    with pytest.raises(EmbeddingFileError, match="junk.npz: not a valid .npz file"):
        load_embeddings(tmp_path / "junk.npz")
    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, **good_arrays(), class_names=np.array(["a", 1, None], dtype=object))
    with pytest.raises(EmbeddingFileError, match="pickled.npz: holds an object array"):
        load_embeddings(pickled)
    short = tmp_path / "short.npz"
    np.savez(short, **good_arrays(), class_names=np.array(["a", "b"]))
    with pytest.raises(EmbeddingFileError, match="short.npz: class_names has 2 entries but labels go up to 2"):
        load_embeddings(short)
    with pytest.raises(EmbeddingFileError, match="seed must be an int"):
        load_embeddings("digits", seed="0")
    with pytest.raises(EmbeddingFileError, match="data_dir must be a folder path or None; got 3"):
        load_embeddings("fashion-mnist-ae", data_dir=3)


def test_write_embeddings_is_validated_and_atomic(tmp_path):
    arrays = good_arrays()
    out = write_embeddings(tmp_path / "sub" / "w.npz", arrays["X_train"], arrays["y_train"], arrays["X_test"],
                           arrays["y_test"], ["a", "b", "c"], name="my set", note="from a test", standin=True)
    data = load_embeddings(out)
    assert (data.name, data.note, data.standin, data.class_names) == ("my set", "from a test", True, ["a", "b", "c"])
    with pytest.raises(EmbeddingFileError, match="never seen"):
        write_embeddings(tmp_path / "x.npz", arrays["X_train"], arrays["y_train"], arrays["X_test"],
                         np.array([0, 1, 3]), ["a", "b", "c", "d"], name="n", note="", standin=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["w.npz"]


def test_select_classes_relabels():
    arrays = good_arrays(classes=4)
    from torchfpe.data.embeddings import to_embedding_set, validate_arrays

    data = to_embedding_set(validate_arrays("t", arrays["X_train"], arrays["y_train"], arrays["X_test"],
                                            arrays["y_test"], list("abcd")), name="t", standin=False, note="")
    sub = data.select_classes([3, 1])
    assert sub.class_names == ["d", "b"] and sub.y_train.tolist() == [1] * 4 + [0] * 4
    np.testing.assert_array_equal(sub.x_train[:4].numpy(), data.x_train[4:8].numpy())
    assert sub.y_test.tolist() == [1, 0]
    with pytest.raises(EmbeddingFileError, match="outside 0..3"):
        data.select_classes([0, 4])


# ---------------------------------------------------------------- Parquet

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def write_parquet(path, arrays, *, names=None, fixed=False, **columns):
    vectors = np.concatenate([arrays["X_train"], arrays["X_test"]])
    labels = np.concatenate([arrays["y_train"], arrays["y_test"]])
    split = ["train"] * len(arrays["y_train"]) + ["test"] * len(arrays["y_test"])
    vector_type = pa.list_(pa.float32(), vectors.shape[1]) if fixed else pa.list_(pa.float64())
    table = {"embedding": pa.array(vectors.tolist(), type=vector_type), "label": labels, "split": split}
    if names is not None:
        table["class_name"] = [names[int(label)] for label in labels]
    table.update(columns)
    pq.write_table(pa.table(table), path)
    return path


@pytest.mark.parametrize("fixed", [False, True])
def test_parquet_matches_npz(tmp_path, fixed):
    arrays = good_arrays()
    npz = tmp_path / "e.npz"
    np.savez(npz, **arrays, class_names=np.array(["ant", "bee", "cow"]))
    parquet = write_parquet(tmp_path / "e.parquet", arrays, names=["ant", "bee", "cow"], fixed=fixed)
    a, b = load_embeddings(npz), load_embeddings(parquet)
    for key in ("x_train", "y_train", "x_test", "y_test"):
        torch.testing.assert_close(getattr(a, key), getattr(b, key))
    assert b.class_names == ["ant", "bee", "cow"] and b.name == "e.parquet"


def test_bad_parquet_names_the_file(tmp_path):
    arrays = good_arrays()
    rows = len(arrays["y_train"]) + len(arrays["y_test"])
    cases = {
        "split values": (dict(split=["train"] * (rows - 1) + ["validation"]), "column 'split' must hold 'train' or 'test'; found \\['validation'\\]"),
        "no test rows": (dict(split=["train"] * rows), "needs rows with split 'train' and rows with split 'test'"),
        "string labels": (dict(label=["x"] * rows), "y_train must hold integer labels"),
        "two names": (dict(class_name=["a"] * (rows - 1) + ["b"]), r"label 2 has several class names \[.a., .b.\]"),
    }
    for case, (columns, message) in cases.items():
        path = write_parquet(tmp_path / "bad.parquet", arrays, **columns)
        with pytest.raises(EmbeddingFileError, match=f"bad.parquet: {message}"):
            load_embeddings(path)
    ragged = pa.table({"embedding": pa.array([[1.0, 2.0]] * 5 + [[1.0]]), "label": [0, 0, 1, 1, 0, 1],
                       "split": ["train"] * 4 + ["test"] * 2})
    pq.write_table(ragged, tmp_path / "ragged.parquet")
    with pytest.raises(EmbeddingFileError, match="ragged.parquet: column 'embedding' has vectors of different lengths"):
        load_embeddings(tmp_path / "ragged.parquet")
    pq.write_table(pa.table({"vec": [[1.0]], "label": [0]}), tmp_path / "cols.parquet")
    with pytest.raises(EmbeddingFileError, match=r"cols.parquet: missing columns \['embedding', 'split'\]"):
        load_embeddings(tmp_path / "cols.parquet")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 nope")
    with pytest.raises(EmbeddingFileError, match="junk.parquet: not a readable Parquet file"):
        load_embeddings(tmp_path / "junk.parquet")
    nulls = pa.table({"embedding": pa.array([[1.0, None]] * 6), "label": [0, 0, 1, 1, 0, 1],
                      "split": ["train"] * 4 + ["test"] * 2})
    pq.write_table(nulls, tmp_path / "nulls.parquet")
    with pytest.raises(EmbeddingFileError, match="nulls.parquet: column 'embedding' has empty"):
        load_embeddings(tmp_path / "nulls.parquet")
