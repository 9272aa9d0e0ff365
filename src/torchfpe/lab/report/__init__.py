"""Write the results of a study as ``records.csv``, ``report.md`` and PNG figures.

One public function, :func:`write_report`, takes the study's metadata and its flat records
(one per ``(config, variant, seed)``, or one per ``(k, alpha, seed)`` for the theory study)
and writes into ``out_dir``. The metadata (the study's ``meta``, copied into ``meta.json``) names
its report page (``meta["page"]``: a page registered in :data:`.pages.PAGES`, built in ``headline``,
``sweep``, ``grid``, ``theory``, ``cells``, ``match``; each page registers itself beside its code),
the paper's numbers (shown only beside the data set they belong to) and the data's name where
records carry no ``dataset`` field; old meta.json files (``layout``, or only a Boolean study name)
are read by :func:`.pages.page_name`.
Runs pair for paired tests by their config without the seed, and by seed, never across data sets.
The Boolean layouts:

* ``records.csv`` -- every record key except ``hidden_weight``, sorted by the swept axis,
  the variant order of :func:`variant_order` (the split registry's), then seed;
* ``report.md`` -- the command, date, data note, base config and the study's tables;
* figures (matplotlib, Agg backend), linked from ``report.md`` with relative paths:

  ========================================  ==================================================
  study                                     figures
  ========================================  ==================================================
  headline                                  ``accuracy.png``, ``gram.png``, ``weights.png``
  neurons / clauses / alpha / data          ``accuracy_vs_<axis>.png``, ``gain_vs_<axis>.png``
  cells (heads, deep, cnn, lm studies)      ``accuracy_vs_<axis>.png`` (``<metric>_vs_<axis>.png``
                                            when the study names its metric, e.g. lm's bits/byte),
                                            ``gain_vs_<axis>.png``
  metrics                                   ``fold_vs_gain.png``
  theory                                    ``collisions.png``
  ========================================  ==================================================

The ``cells``, ``match`` and ``sweep`` pages report the metric ``meta["metric"]`` names (key, label,
direction, percent or not; :mod:`.metric`), test accuracy by default. Every variant has one colour in
every figure (the split registry's order; dense black, ``wide<scale>`` shades of grey); captions state
the seeds the records really hold, and draw no CI from one seed.

Statistics: means with sample standard deviations (``ddof=1``) and two-sided 95 % confidence
intervals from the t distribution; paired t-tests over seeds (``scipy.stats.ttest_rel``).
Anything that cannot be computed (one seed, a missing dense run, NaN metrics) is shown as "—".

The package is split into :mod:`.constants`, :mod:`.stats` (statistics, formatting, value
helpers), :mod:`.markdown` (table and header building blocks), :mod:`.figures` (matplotlib,
imported lazily), :mod:`.sections` (per-study parts of ``report.md``) and :mod:`.write`
(:func:`records_frame`, :func:`write_report`), :mod:`.cells` (the real-model pages), :mod:`.pages`
(the page registry). Every
public name is re-exported here, except those of :mod:`.fidelity` (the Boolean fidelity analysis of
stored runs, ``torchfpe fidelity``), which stays a submodule so that ``python -m
torchfpe.lab.report.fidelity`` runs without a second copy of it.
"""

from .cells import cells_section, match_section, paper_key
from .constants import (CONFIG_FIELDS, DASH, DATA_NAME, DPI, EXCLUDED_CSV_KEYS, FOLD_METRICS, HEATMAP_VARIANTS,
                        INTERFERENCE_METRICS, PAPER_ACCURACY, PAPER_CONFIG, RESULT_FIELDS, THEORY_FIELDS, is_fpe,
                        variant_order)
from .figures import plot_collisions, plot_fold_vs_gain, plot_headline_accuracy, plot_heatmaps, plot_sweep
from .markdown import md_table
from .pages import PAGES, Page, page_name, page_of, register_page
from .sections import (cell_table, fold_fits, headline_section, metrics_section, sweep_section, theory_section,
                       trend_sentences)
from .stats import (PairedTest, Summary, data_name, fmt_ci, fmt_fixed, fmt_num, fmt_p, fmt_pct, fmt_pm, fmt_value,
                    ordered_variants, paired_test, pairing_columns, paper_numbers, study_axes, summarize,
                    variant_rank)
from .write import records_frame, resolve_meta, write_report

__all__ = [
    "CONFIG_FIELDS",
    "DASH",
    "DATA_NAME",
    "DPI",
    "EXCLUDED_CSV_KEYS",
    "FOLD_METRICS",
    "HEATMAP_VARIANTS",
    "INTERFERENCE_METRICS",
    "PAPER_ACCURACY",
    "PAPER_CONFIG",
    "RESULT_FIELDS",
    "PAGES",
    "Page",
    "page_name",
    "page_of",
    "register_page",
    "THEORY_FIELDS",
    "is_fpe",
    "variant_order",
    "PairedTest",
    "Summary",
    "cell_table",
    "cells_section",
    "data_name",
    "match_section",
    "pairing_columns",
    "paper_key",
    "paper_numbers",
    "resolve_meta",
    "fmt_ci",
    "fmt_fixed",
    "fmt_num",
    "fmt_p",
    "fmt_pct",
    "fmt_pm",
    "fmt_value",
    "fold_fits",
    "headline_section",
    "md_table",
    "metrics_section",
    "ordered_variants",
    "paired_test",
    "plot_collisions",
    "plot_fold_vs_gain",
    "plot_headline_accuracy",
    "plot_heatmaps",
    "plot_sweep",
    "records_frame",
    "study_axes",
    "summarize",
    "sweep_section",
    "theory_section",
    "trend_sentences",
    "variant_rank",
    "write_report",
]
