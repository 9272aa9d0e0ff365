"""Small offline data sets built in by name: real but tiny (digits, mnist1d) and synthetic (synthetic-100).

Each is a stand-in for the paper's CLIP embeddings and says so in its ``name``; none touches the network.
The frozen-encoder stand-in ``fashion-mnist-ae`` lives in :mod:`torchfpe.data.standin`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np

from .embeddings import EmbeddingSet, to_embedding_set, read_npz, validate_arrays, write_embeddings


def digits(seed: int = 0) -> EmbeddingSet:
    """scikit-learn's 8x8 handwritten digits (1797 images, 64 pixel features scaled to [0, 1]);
    a stratified 75/25 train/test split drawn with ``seed``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the built-in 'digits' set needs scikit-learn: pip install 'torchfpe[data]'") from None
    bunch = load_digits()
    x, y = bunch.data.astype(np.float32) / 16.0, bunch.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        test[members[: round(0.25 * len(members))]] = True
    checked = validate_arrays("digits", x[~test], y[~test], x[test], y[test], [str(d) for d in range(10)])
    return to_embedding_set(checked, name="digits (8x8 pixels; stand-in, not CLIP)", standin=True,
                   note=f"scikit-learn load_digits, pixels / 16, stratified 75/25 split with seed {seed}")


def mnist1d(seed: int = 0, *, cache_dir: str | os.PathLike | None = None) -> EmbeddingSet:
    """MNIST-1D (Greydanus 2020) generated offline by the ``mnist1d`` package's ``make_dataset`` with its
    default arguments: 4000 train and 1000 test signals of length 40, 10 classes. ``seed`` is not used:
    the package's own seed (42) gives the canonical set, so results compare with published ones.
    Generating takes seconds, so the set is cached (``cache_dir``, default as for the stand-in)."""
    del seed
    try:
        import mnist1d as package
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError:
        raise ImportError("the built-in 'mnist1d' set needs the mnist1d package: pip install 'torchfpe[data]'") from None
    from .standin import default_cache_dir

    args = get_dataset_args(as_dict=True)
    key = json.dumps({"version": getattr(package, "__version__", "?"), **{k: v for k, v in args.items() if k != "url"}},
                     sort_keys=True)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f"mnist1d-{hashlib.sha256(key.encode()).hexdigest()[:12]}.npz"
    if not path.is_file():
        # make_dataset reseeds the global numpy and random generators; put them back afterwards.
        numpy_state, python_state = np.random.get_state(), random.getstate()
        try:
            data = make_dataset(get_dataset_args())
        finally:
            np.random.set_state(numpy_state)
            random.setstate(python_state)
        write_embeddings(path, data["x"], data["y"], data["x_test"], data["y_test"], [str(d) for d in range(10)],
                         name="MNIST-1D (raw signals; stand-in, not CLIP)", standin=True,
                         note="mnist1d.data.make_dataset with the package's default arguments (its seed 42), "
                              "generated offline")
    return read_npz(path)


def synthetic(seed: int = 0, *, dim: int = 128, superclasses: int = 20, per_superclass: int = 5,
              superclass_scale: float = 1.0, class_scale: float = 0.25, noise_scale: float = 1.0,
              train_per_class: int = 100, test_per_class: int = 50) -> EmbeddingSet:
    """Synthetic many-class embeddings, built like CIFAR-100's 20 superclasses of 5 classes each:

    superclass centre ``s_g ~ N(0, superclass_scale^2 I_dim)``; class mean ``m_c = s_g + N(0, class_scale^2 I)``;
    example ``x = m_c + N(0, noise_scale^2 I)``. All draws from ``numpy.random.default_rng(seed)``.
    The defaults (100 classes, 128 dims, class clusters overlapping within a superclass) are chosen so
    that a linear classifier does well and a head of a few neurons does not: the regime where classes
    far outnumber neurons.
    """
    rng = np.random.default_rng(seed)
    classes = superclasses * per_superclass
    centres = rng.normal(0.0, superclass_scale, (superclasses, dim))
    means = (centres[:, None, :] + rng.normal(0.0, class_scale, (superclasses, per_superclass, dim))).reshape(classes, dim)

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(classes), per_class)
        x = means[y] + rng.normal(0.0, noise_scale, (len(y), dim))
        order = rng.permutation(len(y))
        return x[order].astype(np.float32), y[order]

    x_train, y_train = draw(train_per_class)
    x_test, y_test = draw(test_per_class)
    names = [f"s{c // per_superclass:02d}c{c % per_superclass}" for c in range(classes)]
    checked = validate_arrays(f"synthetic-{classes}", x_train, y_train, x_test, y_test, names)
    return to_embedding_set(checked, name=f"synthetic {classes}-class embeddings (synthetic)", standin=True,
                   note=(f"{superclasses} superclasses x {per_superclass} Gaussian class clusters in {dim} dims "
                         f"(scales {superclass_scale}/{class_scale}/{noise_scale}), seed {seed}; synthetic, not images"))

