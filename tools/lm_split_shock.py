"""How much an expansion changes a warmed-up LM at the moment of the split: test bits/byte before any T2 step.

    python tools/lm_split_shock.py --d-ff 16,64,256 --seeds 3 --variants random,random@outgoing,random@structured

For each d_ff and seed: the dense model after ``warmup_steps`` steps, exactly as in ``torchfpe reproduce
lm`` (the protocol's parent, batch generator and training hook), then each variant built from it by
the protocol (:func:`torchfpe.lab.experiments.protocol.build_variant`) and scored on the test text at once.
Prints a markdown table of mean ± std over seeds (bits/byte; the dense row is the warm model itself).
Other config fields: ``--set field=value`` as for ``reproduce lm``.
"""

from __future__ import annotations

import argparse

import torch

from torchfpe.lab import api
from torchfpe.lab.experiments import lm, protocol
from torchfpe.lab.report.stats import summarize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-ff", default="16,64,256")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--variants", default="random,random@outgoing,random@structured,grouped@structured")
    parser.add_argument("--set", dest="sets", action="append", default=[])
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = api.parse_overrides("lm", args.sets)
    variants = args.variants.split(",")
    rows = []
    for d_ff in map(int, args.d_ff.split(",")):
        scores: dict[str, list[float]] = {"dense": [], **{v: [] for v in variants}}
        for seed in range(args.seeds):
            config = lm.EXPERIMENT.make_config(**{**overrides, "d_ff": d_ff, "seed": seed, "variants": "+".join(variants)})
            task, data = lm.TASK, lm.TASK.data(config)
            torch.manual_seed(config.seed)
            warm = task.parent(config)
            task.train(warm, config, data, config.warmup_steps, protocol.batch_generator(config, 0))
            scores["dense"].append(task.evaluate(warm, config, data)["bits_per_byte"])
            for variant in variants:
                model = protocol.build_variant(task, config, variant, warm, data)
                scores[variant].append(task.evaluate(model, config, data)["bits_per_byte"])
        for variant, values in scores.items():
            s = summarize(values)
            rows.append(f"| {d_ff} | {'warm dense (T1)' if variant == 'dense' else variant} | {s.n} | "
                        f"{s.mean:.3f} ± {s.std:.3f} |")
    print("| d_ff | model at the split | n seeds | test bits/byte before T2 (mean ± std) |\n|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
