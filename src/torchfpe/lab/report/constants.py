"""Constants shared by the report modules: variant order, record fields, paper numbers, labels."""

from __future__ import annotations

def variant_order() -> tuple[str, ...]:
    """Display and sort order of the variants: dense, then the registered splits in registration order
    (:data:`torchfpe.core.splits.SPLITS`); other variants (``wide<scale>``) sort after, alphabetically."""
    from ...core.splits import SPLITS

    return ("dense", *SPLITS)


def is_fpe(variant: str) -> bool:
    """Whether a variant is an FPE split (disjoint children), not dense, a control or a wider dense model; a
    split with modifiers (``random@structured``, ``random@carry``) is its split."""
    from ...core.splits import SPLITS
    from ..experiments.protocol import split_of

    split = split_of(variant)
    return split is not None and not SPLITS[split].control


def read_variant(variant: object):
    """A stored variant name read by the protocol's one grammar reader
    (:func:`torchfpe.lab.experiments.protocol.read_variant`), or None."""
    from ..experiments.protocol import read_variant as read

    return read(str(variant)) if variant is not None else None


def wide_scale(variant: object) -> float | None:
    """The scale of a ``wide<scale>`` variant (a wider dense model), else None."""
    parsed = read_variant(variant)
    return parsed.scale if parsed is not None and parsed.kind == "wide" else None


#: The paper's headline test accuracies (%), Boolean DNF with 8 clauses, 8 neurons, alpha = 2.
PAPER_ACCURACY: dict[str, float] = {"dense": 78.7, "random": 88.7, "clause": 99.4}
#: The config in which the paper reports :data:`PAPER_ACCURACY`.
PAPER_CONFIG: dict[str, int] = {"clauses": 8, "neurons": 8, "alpha": 2}
#: Every table caption and figure caption names the data with this phrase.
DATA_NAME = "synthetic Boolean DNF"
#: Config fields, in CSV column order.
CONFIG_FIELDS: tuple[str, ...] = (
    "n_vars", "clauses", "literals", "negation_prob", "variables", "encoding", "sampling",
    "train_size", "test_size", "neurons", "alpha", "bias", "budget", "dropconnect_p", "optimizer", "lr",
    "weight_decay", "batch_size", "warmup_epochs", "epochs_after", "dtype", "variants", "seed",
)
#: Result fields of a training record, in CSV column order.
RESULT_FIELDS: tuple[str, ...] = (
    "variant", "test_accuracy", "train_accuracy", "nonzero_parameters", "hidden_units",
    "capacity_mean", "capacity_sum", "cosine_mean", "cosine_abs_mean",
    "relative_gain", "capacity_mean_fold", "cosine_mean_fold", "cosine_abs_mean_fold",
)
#: Fields of a theory record, in CSV column order.
THEORY_FIELDS: tuple[str, ...] = (
    "k", "alpha", "n_vars", "trials", "seed",
    "collision_mc", "collision_theory", "collision_balanced_exact",
    "coverage_mc", "coverage_theory", "coverage_balanced_exact",
)
#: Interference metrics shown in the headline study: (record key, label).
INTERFERENCE_METRICS: tuple[tuple[str, str], ...] = (
    ("capacity_mean", "capacity mean"),
    ("capacity_sum", "capacity sum"),
    ("cosine_mean", "cosine mean"),
    ("cosine_abs_mean", "|cosine| mean"),
)
#: Fold-change metrics of the metrics study: (record key, label).
FOLD_METRICS: tuple[tuple[str, str], ...] = (
    ("capacity_mean_fold", "feature capacity (mean) fold change"),
    # |cosine|, not the signed mean: the signed mean sits near 0, so its ratio is noise.
    ("cosine_abs_mean_fold", "mean absolute cosine similarity fold change"),
)
#: The paper numbers of a legacy headline meta.json (Boolean studies now carry them in ``meta["paper"]``).
LEGACY_PAPER: dict = {"dataset": DATA_NAME, "accuracy": PAPER_ACCURACY, "config": PAPER_CONFIG,
                      "source": "arXiv 2510.04500 (8 clauses, 8 neurons, α = 2)"}
#: Variants whose first hidden layer is drawn in ``gram.png`` / ``weights.png`` when the study's meta names
#: none (``meta["heatmaps"]``; meta.json files written before studies carried it).
HEATMAP_VARIANTS: tuple[str, ...] = ("dense", "random", "clause")
DPI = 120
DASH = "—"
EXCLUDED_CSV_KEYS: frozenset[str] = frozenset({"hidden_weight", "input_order"})
