"""Collision theory of the random split, checked by Monte Carlo (no training).

Two disjoint k-literal clauses land wholly in one child of a random split into alpha groups with
probability about alpha^-(2k-1); one clause lands wholly in one child with probability about
alpha^-(k-1). For an actual balanced partition of n variables into groups of sizes s_c the exact
probability that m given variables share a group is sum_c C(s_c, m) / C(n, m).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ... import metrics
from .boolean import boolean_meta
from .registry import register_experiment
from .studies import Study


@dataclass(frozen=True)
class TheoryConfig:
    k: int = 3
    alpha: int = 2
    n_vars: int = 48
    trials: int = 200_000
    seed: int = 0

    def __post_init__(self) -> None:
        from ...core.validation import Interval, invalid, validate_dataclass

        count = Interval(int, 1)
        validate_dataclass(self, {"k": [count], "alpha": [Interval(int, 2)], "n_vars": [count], "trials": [count],
                                  "seed": [Interval(int, 0, 2**32 - 1)]}, "TheoryConfig")
        if 2 * self.k > self.n_vars:
            raise invalid("k", "TheoryConfig", f"an int <= n_vars / 2 = {self.n_vars // 2} (two clauses of k "
                          "variables must fit)", self.k)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def without_seed(self) -> tuple:
        values = self.to_dict()
        values.pop("seed")
        return tuple(sorted(values.items()))


def balanced_same_child_probability(n_vars: int, alpha: int, members: int) -> float:
    """Exact probability that ``members`` given variables share a child of a balanced random partition."""
    sizes = [n_vars // alpha + (1 if c < n_vars % alpha else 0) for c in range(alpha)]
    return sum(math.comb(s, members) for s in sizes) / math.comb(n_vars, members)


def run(config: TheoryConfig) -> list[dict]:
    record = config.to_dict()
    record.update(
        collision_mc=metrics.collision_probability_mc(config.k, config.alpha, n_vars=config.n_vars,
                                                      trials=config.trials, seed=config.seed),
        collision_theory=metrics.collision_probability_theory(config.k, config.alpha),
        collision_balanced_exact=balanced_same_child_probability(config.n_vars, config.alpha, 2 * config.k),
        coverage_mc=metrics.clause_coverage_mc(config.k, config.alpha, n_vars=config.n_vars,
                                               trials=config.trials, seed=config.seed),
        coverage_theory=metrics.clause_coverage_theory(config.k, config.alpha),
        coverage_balanced_exact=balanced_same_child_probability(config.n_vars, config.alpha, config.k),
    )
    return [record]


def run_batch(configs: Sequence[TheoryConfig]) -> list[dict]:
    return [record for config in configs for record in run(config)]


STUDIES = (
    Study("theory", "theory", "Monte-Carlo check of the collision formula of the random split",
          {"k": (2, 3, 4), "alpha": (2, 4, 8)}, default_seeds=1, meta=boolean_meta("theory")),
)

EXPERIMENT = register_experiment("theory", TheoryConfig, run_batch, studies=STUDIES)
