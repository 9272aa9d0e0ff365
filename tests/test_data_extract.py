"""``extract_embeddings`` for real, with a tiny randomly initialised CLIP image tower saved to a tmp dir."""

import numpy as np
import pytest

pytest.importorskip("transformers")
PIL = pytest.importorskip("PIL.Image")

from torchfpe.data import EmbeddingFileError, load_embeddings  # noqa: E402
from torchfpe.data.extract import ExtractionError, extract_embeddings  # noqa: E402

PROJECTION = 16


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    import torch
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = tmp_path_factory.mktemp("tiny-clip")
    config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=PROJECTION)
    torch.manual_seed(0)
    CLIPVisionModelWithProjection(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def write_images(root, layout, seed=0, size=(20, 24)):
    """layout: {split: {class: count}}; random RGB PNGs."""
    rng = np.random.default_rng(seed)
    for split, classes in layout.items():
        for name, count in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                PIL.fromarray(pixels).save(folder / f"img{i}.png")
    return root


LAYOUT = {"train": {"cat": 3, "dog": 2, "emu": 2}, "test": {"cat": 1, "emu": 2}}


def test_extraction_writes_a_loadable_deterministic_file(tiny_clip, tmp_path):
    source = write_images(tmp_path / "images", LAYOUT)
    first = extract_embeddings(source, str(tiny_clip), tmp_path / "a.npz", batch_size=2, quiet=True)
    second = extract_embeddings(source, tiny_clip, tmp_path / "b.npz", batch_size=5, quiet=True)
    with np.load(first) as a, np.load(second) as b:
        assert a["X_train"].shape == (7, PROJECTION) and a["X_test"].shape == (3, PROJECTION)
        assert a["y_train"].tolist() == [0, 0, 0, 1, 1, 2, 2] and a["y_test"].tolist() == [0, 2, 2]
        assert a["class_names"].tolist() == ["cat", "dog", "emu"]
        # batching does not change the vectors; identical images give identical vectors
        np.testing.assert_allclose(a["X_train"], b["X_train"], rtol=1e-5, atol=1e-6)
        assert np.abs(a["X_train"][0] - a["X_train"][1]).max() > 0
    loaded = load_embeddings(first)
    assert loaded.class_names == ["cat", "dog", "emu"] and loaded.dim == PROJECTION and not loaded.standin
    assert "tiny-clip" in loaded.name and loaded.x_test.shape == (3, PROJECTION)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz", "images"]


def test_same_image_gives_same_vector_in_train_and_test(tiny_clip, tmp_path):
    source = write_images(tmp_path / "images", {"train": {"a": 2, "b": 2}, "test": {"a": 2}}, seed=3)
    (source / "test" / "a" / "img0.png").write_bytes((source / "train" / "b" / "img1.png").read_bytes())
    out = extract_embeddings(source, tiny_clip, tmp_path / "e.npz", quiet=True)
    with np.load(out) as data:
        np.testing.assert_allclose(data["X_test"][0], data["X_train"][3], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case, message", [
    ("no_test", "missing the test/ folder"),
    ("one_class", "at least 2 class subfolders"),
    ("empty_class", "no images"),
    ("unreadable", "bad.png: not a readable image"),
    ("unknown_test_class", "no counterpart in train/"),
    ("loose_images", "holds images directly"),
    ("lonely_image", "1 image; every class needs at least 2 training images"),
])
def test_bad_folders_are_named_and_nothing_is_written(tiny_clip, tmp_path, case, message):
    layout = {"train": {"a": 2, "b": 2}, "test": {"a": 1}}
    if case == "one_class":
        layout["train"] = {"a": 2}
    if case == "unknown_test_class":
        layout["test"] = {"zebra": 1}
    if case == "lonely_image":
        layout["train"] = {"a": 2, "b": 1}
    source = write_images(tmp_path / "images", layout)
    if case == "no_test":
        for path in (source / "test" / "a").iterdir():
            path.unlink()
        (source / "test" / "a").rmdir()
        (source / "test").rmdir()
    if case == "empty_class":
        (source / "train" / "c").mkdir()
    if case == "unreadable":
        (source / "train" / "a" / "bad.png").write_bytes(b"not a png at all")
    if case == "loose_images":
        PIL.fromarray(np.zeros((4, 4, 3), np.uint8)).save(source / "train" / "stray.png")
    out = tmp_path / "out" / "e.npz"
    with pytest.raises(ExtractionError, match=message):
        extract_embeddings(source, tiny_clip, out, quiet=True)
    assert not (tmp_path / "out").exists()


def test_model_errors_are_clear(tiny_clip, tmp_path):
    source = write_images(tmp_path / "images", {"train": {"a": 2, "b": 2}, "test": {"a": 1}})
    no_weights = tmp_path / "no-weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((tiny_clip / "config.json").read_text())
    with pytest.raises(ExtractionError, match="without weights"):
        extract_embeddings(source, no_weights, tmp_path / "e.npz", quiet=True)
    with pytest.raises(ExtractionError, match="no such model directory"):
        extract_embeddings(source, "./no/such/model", tmp_path / "e.npz", quiet=True)
    with pytest.raises(ExtractionError, match="batch_size"):
        extract_embeddings(source, tiny_clip, tmp_path / "e.npz", batch_size=0, quiet=True)
    with pytest.raises(ExtractionError, match="must end in .npz"):
        extract_embeddings(source, tiny_clip, tmp_path / "e.csv", quiet=True)
    with pytest.raises(ExtractionError, match="not a torch device"):
        extract_embeddings(source, tiny_clip, tmp_path / "e.npz", device="toaster", quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "no-weights"]


def test_unknown_hub_name_is_a_clear_error_offline(tiny_clip, tmp_path, monkeypatch):
    import subprocess
    import sys

    source = write_images(tmp_path / "images", {"train": {"a": 2, "b": 2}, "test": {"a": 1}})
    code = ("import sys\nfrom torchfpe.data.extract import extract_embeddings\n"
            "try:\n    extract_embeddings(sys.argv[1], 'no-such-org/no-such-clip-model', sys.argv[2], quiet=True)\n"
            "except ValueError as e:\n    print('ERROR', e)\n")
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", code, str(source), str(tmp_path / "e.npz")],
                            capture_output=True, text=True, env=env, timeout=120)
    assert "ERROR model 'no-such-org/no-such-clip-model' is not a local directory" in result.stdout, result.stderr
    assert not (tmp_path / "e.npz").exists()


def test_extracted_file_with_bad_content_is_refused_by_the_loader(tmp_path):
    # the loader is the second line of defence for files written elsewhere
    path = tmp_path / "bad.npz"
    np.savez(path, X_train=np.zeros((4, 3)), y_train=np.array([0, 0, 1, 1]), X_test=np.zeros((2, 4)),
             y_test=np.array([0, 1]))
    with pytest.raises(EmbeddingFileError, match="bad.npz: X_train has 3 features but X_test has 4"):
        load_embeddings(path)


def test_exported_image_set_extracts_with_the_papers_name(tiny_clip, tmp_path):
    import torch

    from torchfpe.data import ImageSet
    from torchfpe.data.folders import export_image_folder

    rng = np.random.default_rng(0)
    images = ImageSet(x_train=torch.from_numpy(rng.integers(0, 256, (6, 28, 28), dtype=np.uint8)),
                      y_train=torch.tensor([0, 1, 2, 0, 1, 2]),
                      x_test=torch.from_numpy(rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)),
                      y_test=torch.tensor([2, 1, 0]), class_names=["c", "b", "a"], name="t")
    folder = export_image_folder(images, tmp_path / "fashion-mnist")
    data = load_embeddings(extract_embeddings(folder, tiny_clip, tmp_path / "f.npz", quiet=True))
    assert data.name == "CLIP Fashion-MNIST" and data.class_names == ["a", "b", "c"]
    assert data.y_train.tolist() == [0, 0, 1, 1, 2, 2] and data.y_test.tolist() == [0, 1, 2]  # by folder


def test_full_clip_checkpoint_gives_its_image_features(tmp_path):
    """Hub CLIP models are full CLIPModel checkpoints (text and image towers): the extraction must load
    the image tower with the checkpoint's own projection and give CLIPModel's image features."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(text_config=dict(small, vocab_size=64, max_position_embeddings=8, bos_token_id=0,
                                         eos_token_id=1, pad_token_id=1),
                        vision_config=dict(small, image_size=32, patch_size=8), projection_dim=12)
    torch.manual_seed(0)
    full = CLIPModel(config).eval()
    folder = tmp_path / "full-clip"
    full.save_pretrained(folder)
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(folder)
    source = write_images(tmp_path / "images", {"train": {"a": 2, "b": 2}, "test": {"b": 1}})
    data = load_embeddings(extract_embeddings(source, folder, tmp_path / "e.npz", quiet=True))
    assert data.dim == 12
    images = [PIL.open(p).convert("RGB") for p in sorted((source / "train" / "a").iterdir())]
    with torch.no_grad():
        expected = full.get_image_features(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"])
    expected = expected if torch.is_tensor(expected) else expected.pooler_output
    torch.testing.assert_close(data.x_train[:2], expected.float(), rtol=1e-4, atol=1e-5)


def test_a_model_that_is_not_clip_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    folder = tmp_path / "bert"
    BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
                         vocab_size=20)).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text("{}")
    source = write_images(tmp_path / "images", {"train": {"a": 2, "b": 2}, "test": {"b": 1}})
    with pytest.raises(ExtractionError, match="a 'bert' model, not CLIP"):
        extract_embeddings(source, folder, tmp_path / "e.npz", quiet=True)
    assert not (tmp_path / "e.npz").exists()


def test_missing_optional_packages_name_the_extra(tmp_path, monkeypatch):
    import sys

    source = write_images(tmp_path / "images", {"train": {"a": 2, "b": 2}, "test": {"a": 1}})
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"torchfpe\[embed\]"):
        extract_embeddings(source, "some/model", tmp_path / "e.npz", quiet=True)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "e.parquet").write_bytes(b"PAR1")
    with pytest.raises(ImportError, match=r"torchfpe\[parquet\]"):
        load_embeddings(tmp_path / "e.parquet")
    assert not (tmp_path / "e.npz").exists()
