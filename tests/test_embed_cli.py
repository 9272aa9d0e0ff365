"""``torchfpe embed`` on the command line: checks before any work (defect 13-B7), one-line errors, exit codes."""

import os

import pytest

pytest.importorskip("transformers")
pytest.importorskip("PIL.Image")

from test_data_extract import tiny_clip, write_images  # noqa: E402,F401 - fixture

from helpers import cli, one_error_line  # noqa: E402


@pytest.fixture
def no_encoding(monkeypatch):
    """Fails the test if any image reaches an encoder (the checks must come first)."""
    import torchfpe.data.encode as encode

    def refuse(*args, **kwargs):
        raise AssertionError("an image was encoded before --out was checked")

    monkeypatch.setattr(encode, "encode_images", refuse)


@pytest.mark.parametrize("where", ["under_a_file", "in_proc"])
def test_unwritable_out_is_found_before_encoding_and_named(tiny_clip, tmp_path, no_encoding, where):  # noqa: F811
    if where == "in_proc" and not os.path.isdir("/proc/self"):
        pytest.skip("no /proc file system here")
    source = write_images(tmp_path / "images", {"train": {"a": 2, "b": 2}, "test": {"a": 1}})
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "e.npz" if where == "under_a_file" else "/proc/torchfpe-test/e.npz"
    result = cli("embed", source, "--model", tiny_clip, "--out", out, "--quiet")
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert "--out" in line and ".tmp" not in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "images"]
