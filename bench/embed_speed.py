"""Images per second of the frozen EfficientNet-Lite encoder on Fashion-MNIST-sized images, by input
size, thread count, memory format, batch size and grad mode, measured round-robin in one process (so
that load from other jobs on a shared machine hits every setting alike) and reported as medians over
rounds, with the projected time for the 70000 images of ``fashion-mnist-efficientnet``.

    .venv/bin/python bench/embed_speed.py --out bench/results/embed_speed.json
    .venv/bin/python bench/embed_speed.py --smoke --out /tmp/smoke.json   # seconds: one tiny setting
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from torchfpe.data.efficientnet import load_encoder

FULL_SET = 70000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", default="efficientnet-lite0")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 96, 112])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--formats", nargs="+", default=["channels_last", "contiguous"],
                        choices=["channels_last", "contiguous"])
    parser.add_argument("--grad-modes", nargs="+", default=["inference_mode", "no_grad"],
                        choices=["inference_mode", "no_grad"])
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per setting and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="JSON out (default bench/results/embed_speed.json)")
    parser.add_argument("--smoke", action="store_true",
                        help="a seconds-long run (64 px, 1 thread, batch 8, one round of 0.2 s), for the tests")
    args = parser.parse_args()
    if args.smoke and args.out is None:
        parser.error("--smoke needs --out, so that a smoke run never replaces a result in bench/results/")
    if args.smoke:
        args.sizes, args.threads, args.batch_sizes, args.formats, args.grad_modes = [64], [1], [8], ["channels_last"], \
            ["inference_mode"]
        args.seconds, args.rounds = 0.2, 1
    args.out = args.out or Path("bench/results/embed_speed.json")

    encoders = {size: load_encoder(args.encoder, image_size=size) for size in args.sizes}
    images = torch.randint(0, 256, (max(args.batch_sizes), 28, 28), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    settings = list(itertools.product(args.sizes, args.threads, args.formats, args.batch_sizes, args.grad_modes))
    rates: dict[tuple, list[float]] = {s: [] for s in settings}
    start_threads = torch.get_num_threads()
    for _ in range(args.rounds):
        for setting in settings:
            rates[setting].append(measure(encoders, images, *setting, seconds=args.seconds))
    torch.set_num_threads(start_threads)

    rows = []
    for (size, threads, memory_format, batch, grad), values in rates.items():
        rate = statistics.median(values)
        rows.append({"image_size": size, "threads": threads, "memory_format": memory_format, "batch_size": batch,
                     "grad_mode": grad, "images_per_s": round(rate, 1), "rounds": [round(v, 1) for v in values],
                     "minutes_for_70000": round(FULL_SET / rate / 60, 1)})
    rows.sort(key=lambda r: -r["images_per_s"])
    for row in rows:
        print(f"{row['image_size']:4d} px  {row['threads']} threads  {row['memory_format']:13s}  batch {row['batch_size']:4d}"
              f"  {row['grad_mode']:14s}  {row['images_per_s']:7.1f} img/s  -> 70000 in {row['minutes_for_70000']:5.1f} min")
    result = {"benchmark": "embed_speed", "smoke": args.smoke, "encoder": args.encoder, "date": datetime.now(timezone.utc).isoformat(),
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpus": os.cpu_count(), "torch": torch.__version__,
                          "load_average_at_end": os.getloadavg() if hasattr(os, "getloadavg") else None},
              "seconds_per_setting": args.seconds, "rounds": args.rounds, "results": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


def measure(encoders, images, size, threads, memory_format, batch, grad, *, seconds: float) -> float:
    """Images per second through preprocessing, the network and pooling (what encoding a set costs)."""
    torch.set_num_threads(threads)
    encoder = encoders[size]
    network = encoder.network.to(memory_format=torch.channels_last if memory_format == "channels_last"
                                 else torch.contiguous_format)
    context = torch.inference_mode if grad == "inference_mode" else torch.no_grad
    batch_images = images[:batch]

    def step():
        pixels = encoder.pixels(batch_images)
        if memory_format == "contiguous":
            pixels = pixels.contiguous()
        with context():
            network.extract_features(pixels).mean(dim=(2, 3))

    step()  # warm-up: allocations, kernel choice
    done, begin = 0, time.perf_counter()
    while time.perf_counter() - begin < seconds or done == 0:
        step()
        done += batch
    return done / (time.perf_counter() - begin)


if __name__ == "__main__":
    main()
