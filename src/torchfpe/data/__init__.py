"""Data for the real-model experiments: embedding files, offline data sets, stand-ins, extraction.

Contract (filled in by the data work stream of issue 7; experiments code against these names):

- ``EmbeddingSet``: dataclass with ``x_train`` (float32 tensor, N x d), ``y_train`` (int64, N),
  ``x_test``, ``y_test``, ``class_names`` (list[str]), ``name`` (str shown in every report table,
  e.g. "Fashion-MNIST autoencoder embeddings (stand-in for CLIP)"), ``standin`` (bool) and
  ``note`` (one sentence on where the data came from).
- ``load_embeddings(source, *, data_dir=None, cache_dir=None, seed=0) -> EmbeddingSet``: ``source`` is
  a path to a ``.npz``/``.parquet`` embedding file, or a built-in name (``digits``, ``mnist1d``,
  ``fashion-mnist-ae`` (frozen label-free encoder stand-in), ``synthetic-100``).
  Bad input raises ``EmbeddingFileError`` (a ValueError) naming the file and the problem.
- ``load_fashion_mnist(data_dir=None) -> ImageSet``: uint8 images (N, 28, 28) and int64 labels, train
  and test, from the Debian package ``dataset-fashion-mnist`` or ``data_dir`` holding the IDX files.
- ``torchfpe.data.extract.extract_embeddings(source, model, out, *, batch_size=64, device="cpu",
  quiet=False) -> Path``: the ``torchfpe embed`` command's library function (CLIP via transformers).
"""
