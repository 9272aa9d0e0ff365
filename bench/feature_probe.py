"""How much class information frozen features carry: a linear probe (multinomial logistic regression on
standardised features, scikit-learn) trained on a feature set's training split and scored on its test
split; with ``--controls``, the same probe on the same images through the same network with random
weights (as initialised, and with its batch norms calibrated on the training images), and on the raw
pixels; with ``--sizes``, through the pretrained encoder at other input sizes.

    .venv/bin/python bench/feature_probe.py fashion-mnist-efficientnet --out bench/results/probe_fashion_mnist.json
    .venv/bin/python bench/feature_probe.py fashion-mnist-efficientnet:10000/2000 --controls \
        --out bench/results/probe_fashion_mnist_controls.json
    .venv/bin/python bench/feature_probe.py fashion-mnist-efficientnet:10000/2000 --sizes 64 112 \
        --out bench/results/probe_fashion_mnist_sizes.json
    .venv/bin/python bench/feature_probe.py --smoke --out /tmp/smoke.json   # seconds: digits, 50 iterations

SET is a built-in feature set (``NAME`` or ``NAME:TRAIN/TEST``) or an embedding file; ``--controls``
and ``--sizes`` need a built-in feature set (they re-encode its images).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch


def probe(x_train, y_train, x_test, y_test, *, max_iter: int) -> float:
    from sklearn.linear_model import LogisticRegression

    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    model = LogisticRegression(max_iter=max_iter, C=1.0)
    model.fit((x_train - mean) / std, y_train)
    return float(model.score((x_test - mean) / std, y_test))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set", nargs="?", default=None,
                        help="a built-in feature set (NAME or NAME:TRAIN/TEST) or an embedding file")
    parser.add_argument("--controls", action="store_true",
                        help="also probe random weights (as initialised; batch norm calibrated) and raw pixels")
    parser.add_argument("--sizes", type=int, nargs="*", default=[],
                        help="also probe the same images through the pretrained encoder at these input sizes (px)")
    parser.add_argument("--data", default=None, help="data_dir of the built-in set")
    parser.add_argument("--max-iter", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--smoke", action="store_true",
                        help="a seconds-long run on scikit-learn digits (SET defaults to 'digits'), for the tests")
    args = parser.parse_args()
    if args.smoke and args.out is None:
        parser.error("--smoke needs --out, so that a smoke run never replaces a result in bench/results/")
    if args.smoke:
        args.set = args.set or "digits"
        args.max_iter = min(args.max_iter, 50)
    if args.set is None:
        parser.error("SET is required: a built-in feature set or an embedding file")

    from torchfpe.data import load_embeddings
    from torchfpe.data.features import FEATURE_SETS, parse_name

    started = time.perf_counter()
    data = load_embeddings(args.set, data_dir=args.data)
    y_train, y_test = data.y_train.numpy(), data.y_test.numpy()
    label = "pretrained" if "encoder_weights" in data.meta else "as stored"
    features = {label: (data.x_train.numpy(), data.x_test.numpy())}
    if args.controls or args.sizes:
        parsed = parse_name(args.set)
        if parsed is None:
            parser.error("--controls and --sizes need a built-in feature set")
        from torchfpe.data.efficientnet import load_encoder
        from torchfpe.data.encode import encode_images
        from torchfpe.data.imagesets import image_source

        spec = FEATURE_SETS[parsed[0]]
        images = image_source(spec.image_set).load(args.data)
        n_train, n_test = len(y_train), len(y_test)
        x_train, x_test = images.x_train[:n_train], images.x_test[:n_test]
        assert (images.y_train[:n_train].numpy() == y_train).all() and (images.y_test[:n_test].numpy() == y_test).all()
    for size in args.sizes:
        other = load_encoder(spec.encoder, image_size=size)
        features[f"pretrained, {size} px input"] = (encode_images(other, x_train, batch_size=spec.batch_size),
                                                    encode_images(other, x_test, batch_size=spec.batch_size))
    if args.controls:
        random = load_encoder(spec.encoder, image_size=spec.image_size, pretrained=False, seed=0)
        features["random weights (seed 0)"] = (encode_images(random, x_train, batch_size=spec.batch_size),
                                               encode_images(random, x_test, batch_size=spec.batch_size))
        random.calibrate_batch_norm(x_train, batch_size=spec.batch_size)
        features["random weights, batch norm calibrated on the train images"] = (
            encode_images(random, x_train, batch_size=spec.batch_size),
            encode_images(random, x_test, batch_size=spec.batch_size))
        features["raw pixels"] = (x_train.flatten(1).numpy().astype(np.float32),
                                  x_test.flatten(1).numpy().astype(np.float32))
    rows = []
    for label, (a, b) in features.items():
        accuracy = probe(a, y_train, b, y_test, max_iter=args.max_iter)
        rows.append({"features": label, "dims": int(a.shape[1]), "train": len(y_train), "test": len(y_test),
                     "classes": data.num_classes, "probe_accuracy": round(accuracy, 4)})
        print(f"{data.name}: {label}, {a.shape[1]} dims, {len(y_train)} train / {len(y_test)} test, "
              f"{data.num_classes} classes: linear probe {100 * accuracy:.1f} %", flush=True)
    if args.out:
        result = {"benchmark": "feature_probe", "set": args.set, "name": data.name,
                  "meta": {"smoke": args.smoke, **dict(data.meta)},
                  "date": datetime.now(timezone.utc).isoformat(), "seconds": round(time.perf_counter() - started, 1),
                  "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": torch.__version__,
                              "threads": torch.get_num_threads()},
                  "probe": "sklearn LogisticRegression(C=1, lbfgs) on features standardised with the train split",
                  "results": rows}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
