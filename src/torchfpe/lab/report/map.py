"""One map of every measured FPE gain: ``torchfpe map STORE... --out DIR``.

Reads result folders (those ``torchfpe reproduce`` and ``torchfpe sweep`` write), and for every cell
(a config without its seed) and every FPE variant in them, the relative accuracy gain over the dense
run of the same seed: mean and 95 % t-interval over seeds, and the paired t-test of the accuracies.
Each cell sits on two axes the paper names as what decides the gain:

- the **load per neuron**: the features the hidden layer must represent per parent unit (clauses per
  neuron on Boolean DNF; classes per neuron for classifier heads), and
- the **width**: the parent's hidden units.

It writes ``when-fpe-pays.png`` (the figure) and ``when-fpe-pays.md`` (the page: the figure, its
caption with the real seed counts, the table of the paper's claims with the verdict here, and the
table of every point), so every number on the page is rebuilt by the one command it names.

A record without a load (no ``clauses``, ``n_classes`` or ``classes`` field, or no ``neurons``) is left
out of the map, and the page says how many were.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .constants import is_fpe
from .stats import fmt_p, paired_test, summarize

FIGURE = "when-fpe-pays.png"
PAGE = "when-fpe-pays.md"
#: Record fields that count the features a hidden layer must represent, first present wins.
FEATURE_FIELDS = ("clauses", "n_classes", "classes")
#: Fields that never tell two cells apart (the seed pairs runs; results are not config).
_NOT_CELL = {"seed", "variants", "variant"}


# ------------------------------------------------------------------------------------------ reading
@dataclass
class Study:
    """One result folder: its name on the map, what made it, its records."""

    path: Path
    label: str
    meta: dict
    records: list[dict]

    @property
    def command(self) -> str:
        return str(self.meta.get("command") or f"(no command recorded in {self.path / 'meta.json'})")

    @property
    def seeds(self) -> int:
        return len({r.get("seed") for r in self.records})


def read_study(path: str | Path) -> Study:
    """A result folder's meta and the records of the runs it planned (all runs if it names none)."""
    from ..sweep import ResultStore, StoreError

    path = Path(path)
    if not (path / "meta.json").is_file():
        raise StoreError(f"{str(path)!r} is not a result folder (no meta.json); give folders that `torchfpe "
                         "reproduce` or `torchfpe sweep` wrote")
    store = ResultStore(path)
    meta = store.read_meta()
    planned = set(meta.get("keys") or store.keys())
    records = [dict(r) for run in store.all_runs() if run["key"] in planned for r in run["records"]]
    group, study = meta.get("group") or meta.get("experiment"), meta.get("study")
    label = f"{group}-{study}" if group and study else path.name
    return Study(path, label, meta, records)


def load_of(record: Mapping) -> tuple[float, int] | None:
    """(features per parent hidden unit, parent width) of a record, or None when it names neither."""
    features = next((record[f] for f in FEATURE_FIELDS if isinstance(record.get(f), (int, float))), None)
    width = record.get("neurons")
    if features is None or not isinstance(width, (int, float)) or width <= 0:
        return None
    return float(features) / float(width), int(width)


# ------------------------------------------------------------------------------------------ points
@dataclass
class Point:
    """One FPE variant in one cell of one study: its gain over dense across seeds."""

    study: str
    variant: str
    load: float
    width: int
    alpha: int | None
    cell: dict
    seeds: int
    gain: float  # mean relative gain, %
    ci_low: float
    ci_high: float
    p: float  # paired t-test of the accuracies against dense
    accuracy: float  # mean test accuracy, %
    dense: float  # mean dense test accuracy, %


def _cell_key(record: Mapping, config_fields: Sequence[str]) -> tuple:
    return tuple((f, record.get(f)) for f in config_fields if f not in _NOT_CELL)


def study_points(study: Study) -> tuple[list[Point], int]:
    """The study's points and how many of its records have no load (left off the map)."""
    config_fields = list((study.meta.get("base") or {}).keys()) or sorted(
        {k for r in study.records for k in r} - {"variant"})
    metric = (study.meta.get("metric") or {}).get("key", "test_accuracy") if isinstance(
        study.meta.get("metric"), Mapping) else "test_accuracy"
    cells: dict[tuple, list[dict]] = {}
    unplaced = 0
    for record in study.records:
        if load_of(record) is None:
            unplaced += 1
            continue
        cells.setdefault(_cell_key(record, config_fields), []).append(record)
    points = []
    for key, records in cells.items():
        dense = {r["seed"]: r for r in records if r.get("variant") == "dense"}
        variants = dict.fromkeys(r["variant"] for r in records if is_fpe(str(r.get("variant"))))
        for variant in variants:
            pairs = [(r, dense[r["seed"]]) for r in records if r["variant"] == variant and r["seed"] in dense]
            if not pairs:
                continue
            gains = summarize(100.0 * float(r["relative_gain"]) for r, _ in pairs)
            test = paired_test([float(r[metric]) for r, _ in pairs], [float(d[metric]) for _, d in pairs])
            load, width = load_of(pairs[0][0])
            points.append(Point(
                study=study.label, variant=variant, load=load, width=width, alpha=pairs[0][0].get("alpha"),
                cell=dict(key), seeds=len(pairs), gain=gains.mean, ci_low=gains.ci_low, ci_high=gains.ci_high,
                p=test.p, accuracy=100.0 * summarize(float(r[metric]) for r, _ in pairs).mean,
                dense=100.0 * summarize(float(d[metric]) for _, d in pairs).mean))
    return points, unplaced


# ------------------------------------------------------------------------------------------ claims
@dataclass
class Verdict:
    """One row of the claims table."""

    claim: str
    paper: str
    here: str
    verdict: str
    evidence: str  # seeds and p
    command: str


@dataclass
class Claim:
    """A claim of the paper and how to judge it from the points of one study (None: no evidence in it)."""

    text: str
    paper: str
    experiment: str  # the experiment and study (meta.json) whose stores carry the evidence
    study: str
    judge: Callable[[Study, list[Point]], tuple[str, str, str] | None] = field(repr=False)


def _accuracy_claim(variant: str, paper: float) -> Callable:
    def judge(study: Study, points: list[Point]):
        values = [100.0 * float(r["test_accuracy"]) for r in study.records if r.get("variant") == variant]
        if len(values) < 2:
            return None
        s = summarize(values)
        where = ("inside" if s.ci_low <= paper <= s.ci_high else "above" if paper > s.ci_high else "below")
        verdict = "reproduced" if where == "inside" else f"paper's value {where} our 95 % CI"
        return f"{s.mean:.1f} % [{s.ci_low:.1f}, {s.ci_high:.1f}]", verdict, f"{s.n} seeds"
    return judge


def _beats(better: str, worse: str) -> Callable:
    def judge(study: Study, points: list[Point]):
        by_seed = {}
        for r in study.records:
            by_seed.setdefault(r["seed"], {})[r["variant"]] = float(r["test_accuracy"])
        pairs = [(v[better], v[worse]) for v in by_seed.values() if better in v and worse in v]
        if len(pairs) < 2:
            return None
        t = paired_test([a for a, _ in pairs], [b for _, b in pairs])
        here = f"{100 * t.mean_diff:+.1f} points [{100 * t.ci_low:+.1f}, {100 * t.ci_high:+.1f}]"
        return here, _direction(t.mean_diff, t.p), f"{t.n} seeds, p = {fmt_p(t.p)}"
    return judge


def _direction(diff: float, p: float, sign: int = 1) -> str:
    """Verdict of a claim that ``sign * diff > 0``, from the paired test's mean difference and p."""
    if sign * diff > 0 and p < 0.05:
        return "reproduced"
    if sign * diff > 0:
        return "same direction, not significant"
    return "not reproduced" if p < 0.05 else "not reproduced (no significant difference)"


Pick = Callable[[list[Point]], Point]


def _trend(axis: str, variant: str, claim: str, first: Pick | None = None, last: Pick | None = None) -> Callable:
    """The gain of ``variant`` at two values of ``axis`` (default its smallest and largest), paired by seed.

    ``claim``: ``"falls"`` (the gain at ``first`` is larger), ``"rises"`` (at ``last``), or ``"flat"`` (no
    significant difference: "consistent", which 5 seeds can only weakly support).
    """
    def judge(study: Study, points: list[Point]):
        chosen = sorted((p for p in points if p.variant == variant and axis in p.cell), key=lambda p: p.cell[axis])
        if len(chosen) < 2:
            return None
        a = first(chosen) if first else chosen[0]
        b = last(chosen) if last else chosen[-1]
        here = ", ".join(f"{axis} {p.cell[axis]}: {p.gain:+.1f} %" for p in chosen)
        if a is b:
            where = "the smallest" if a is chosen[0] else "the largest"
            return here, f"not reproduced (the largest gain is at {where} {axis})", f"{a.seeds} seeds"
        gains = _paired_gains(study, variant, axis, a.cell[axis], b.cell[axis])
        t = paired_test(*gains) if gains else None
        if t is None or t.n < 2:
            return here, "not enough paired seeds", f"{min(p.seeds for p in chosen)} seeds"
        evidence = f"{t.n} seeds; {axis} {a.cell[axis]} vs {b.cell[axis]}: p = {fmt_p(t.p)}"
        p = t.p if math.isfinite(t.p) else (1.0 if t.mean_diff == 0 else 0.0)  # NaN: every seed's difference equal
        if claim == "flat":
            verdict = "consistent (no significant change)" if p >= 0.05 else (
                "not reproduced (still rising)" if t.mean_diff < 0 else "not reproduced (falls)")
        else:
            verdict = _direction(t.mean_diff, p, +1 if claim == "falls" else -1)
        return here, verdict, evidence
    return judge


def _paired_gains(study: Study, variant: str, axis: str, a: Any, b: Any) -> tuple[list, list] | None:
    """Relative gains of ``variant`` at axis value ``a`` and ``b``, paired by seed (same formula / data)."""
    at: dict[Any, dict] = {a: {}, b: {}}
    for r in study.records:
        if r.get("variant") == variant and r.get(axis) in at and "relative_gain" in r:
            at[r[axis]][r["seed"]] = float(r["relative_gain"])
    seeds = sorted(set(at[a]) & set(at[b]))
    return ([at[a][s] for s in seeds], [at[b][s] for s in seeds]) if seeds else None


def _best(points: list[Point]) -> Point:
    return max(points, key=lambda p: p.gain)


def _from_16(points: list[Point]) -> Point:
    return next((p for p in points if p.cell["clauses"] >= 16), points[-1])


#: The paper's claims this map can judge (paper-brief.md §6), each from one study's stores.
CLAIMS: tuple[Claim, ...] = (
    Claim("dense accuracy at 8 clauses, 8 neurons", "78.7 %", "boolean", "headline", _accuracy_claim("dense", 78.7)),
    Claim("FPE random split accuracy (α = 2)", "88.7 %", "boolean", "headline", _accuracy_claim("random", 88.7)),
    Claim("FPE clause split accuracy (α = 2)", "99.4 %", "boolean", "headline", _accuracy_claim("clause", 99.4)),
    Claim("the random split beats dense", "+10.0 points", "boolean", "headline", _beats("random", "dense")),
    Claim("the clause split beats the random split", "+10.7 points", "boolean", "headline", _beats("clause", "random")),
    Claim("the gain falls as neurons are added (8 clauses; random split)", "falls", "boolean", "neurons",
          _trend("neurons", "random", "falls")),
    Claim("the gain grows with clauses (8 neurons; random split)", "grows", "boolean", "clauses",
          _trend("clauses", "random", "rises")),
    Claim("... then flattens from 16 clauses on", "flat", "boolean", "clauses",
          _trend("clauses", "random", "flat", first=_from_16)),
    Claim("gains rise from α = 2 to moderate α (random split)", "rise", "boolean", "alpha",
          _trend("alpha", "random", "rises", last=_best)),
    Claim("splitting too far hurts (largest α against the best)", "falls", "boolean", "alpha",
          _trend("alpha", "random", "falls", first=_best)),
    Claim("heads: the gain is largest where classes per neuron are highest (fewest neurons)", "largest at high load",
          "heads", "width", _trend("neurons", "random", "falls")),
)


def judge_claims(studies: Sequence[Study], points: Sequence[Point]) -> list[Verdict]:
    """Each claim judged on every given study that carries it; a claim no study carries says what to run."""
    rows = []
    for claim in CLAIMS:
        judged = False
        for study in studies:
            if (study.meta.get("experiment"), study.meta.get("study")) != (claim.experiment, claim.study):
                continue
            result = claim.judge(study, [p for p in points if p.study == study.label])
            if result is None:
                continue
            here, verdict, evidence = result
            rows.append(Verdict(claim.text, claim.paper, f"{here} ({study.label})", verdict, evidence,
                                study.command))
            judged = True
        if not judged:
            rows.append(Verdict(claim.text, claim.paper, "—", "no store given", "—",
                                f"torchfpe reproduce {claim.experiment} --study {claim.study}"))
    return rows


# ------------------------------------------------------------------------------------------ figure
def draw(points: Sequence[Point], studies: Sequence[Study], path: Path) -> Path:
    """Gain (95 % CI) against load per neuron (left) and parent width (right); one colour per study·variant."""
    from .figures import _pyplot

    plt = _pyplot()
    from matplotlib import ticker

    series = list(dict.fromkeys((p.study, p.variant) for p in points))
    colours = plt.get_cmap("tab10" if len(series) <= 10 else "tab20")
    markers = {"random": "o", "clause": "s"}
    seeds = {s.label: s.seeds for s in studies}
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.2), sharey=True)
    for index, (study, variant) in enumerate(series):
        mine = [p for p in points if (p.study, p.variant) == (study, variant)]
        colour = colours(index % colours.N)
        for ax, x_of in ((axes[0], lambda p: p.load), (axes[1], lambda p: p.width)):
            # points of one series at the same x (an alpha sweep) are spread a little, left to right by alpha
            spread = {}
            for p in sorted(mine, key=lambda p: (x_of(p), p.alpha or 0)):
                spread.setdefault(x_of(p), []).append(p)
            xs, ys, lows, highs = [], [], [], []
            for x, group in spread.items():
                for k, p in enumerate(group):
                    offset = 2 ** (0.06 * (k - (len(group) - 1) / 2)) if len(group) > 1 else 1.0
                    xs.append(x * offset)
                    ys.append(p.gain)
                    lows.append(p.gain - p.ci_low if math.isfinite(p.ci_low) else 0.0)
                    highs.append(p.ci_high - p.gain if math.isfinite(p.ci_high) else 0.0)
                    if len(group) > 1:
                        ax.annotate(f"α{p.alpha}", (x * offset, p.gain), textcoords="offset points", xytext=(3, 4),
                                    fontsize=7, color=colour)
            ax.errorbar(xs, ys, yerr=[lows, highs], fmt=markers.get(variant, "^"), color=colour, capsize=3,
                        markersize=6, linestyle="-" if len(spread) > 1 else "none", linewidth=1, alpha=0.9,
                        label=f"{study} · {variant} ({seeds.get(study, '?')} seeds)")
    for ax, name in ((axes[0], "load per neuron (clauses or classes per parent hidden unit)"),
                     (axes[1], "parent width (hidden units before the split)")):
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: f"{x:g}"))
        ax.axhline(0.0, color="0.4", linewidth=0.8, linestyle="--")
        ax.set_xlabel(name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("FPE gain over dense at equal non-zeros (relative, %)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, max(1, len(labels))), fontsize=8, frameon=False,
               title="colour: study · variant (seeds); marker: ● random split, ■ clause split, ▲ other split; "
                     "bars: 95 % t-interval over seeds; α<k>: expansion factor of a point", title_fontsize=8)
    fig.suptitle("When FPE pays: gain against load per neuron and width", fontsize=11)
    rows = math.ceil(len(labels) / 3)
    fig.tight_layout(rect=(0, 0.06 + 0.035 * rows, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ page
def _row(cells: Iterable[Any]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def page(studies: Sequence[Study], points: Sequence[Point], verdicts: Sequence[Verdict], unplaced: int,
         command: str) -> str:
    """The markdown of when-fpe-pays.md."""
    data = sorted({str(s.meta.get("dataset") or s.meta.get("experiment") or "?") for s in studies})
    lines = [
        "# When FPE pays",
        "",
        f"Generated by `{command}` from {len(studies)} result folder(s); every number below comes from those "
        "folders' records (rebuild the page and the figure with the same command). Gain = (FPE accuracy − dense "
        "accuracy) / dense accuracy of the same seed, at the same non-zero count; 95 % t-intervals over seeds; "
        "p from the paired t-test of the accuracies.",
        "",
        f"![FPE gain against load per neuron and width]({FIGURE})",
        "",
        f"*Figure: relative test-accuracy gain of each FPE split over dense ({', '.join(data)}), mean and 95 % "
        "t-interval over seeds, against the load per parent neuron (left) and the parent width (right); "
        + "; ".join(f"{s.label}: {s.seeds} seeds" for s in studies) + "."
        + (f" {unplaced} records name no load (features or width) and are not drawn." if unplaced else "") + "*",
        "",
        "## The paper's claims, judged here",
        "",
        _row(["claim (paper)", "paper", "here", "verdict", "evidence", "command"]),
        _row(["---"] * 6),
        *(_row([v.claim, v.paper, v.here, v.verdict, v.evidence, f"`{v.command}`"]) for v in verdicts),
        "",
        "## Every point on the map",
        "",
        _row(["study", "variant", "cell", "load / neuron", "width", "seeds", "dense %", "FPE %", "gain % [95 % CI]",
              "p"]),
        _row(["---"] * 10),
    ]
    for p in sorted(points, key=lambda p: (p.study, p.variant, p.load, p.width, p.alpha or 0)):
        varied = ", ".join(f"{k}={v}" for k, v in p.cell.items() if _varies(points, p.study, k))
        lines.append(_row([p.study, p.variant, varied or "—", f"{p.load:g}", p.width, p.seeds, f"{p.dense:.1f}",
                           f"{p.accuracy:.1f}", f"{p.gain:+.1f} [{p.ci_low:+.1f}, {p.ci_high:+.1f}]", fmt_p(p.p)]))
    lines += ["", "Result folders and the commands that made them:", ""]
    lines += [f"- `{s.path}`: `{s.command}` ({s.seeds} seeds; {_machine(s.meta)})" for s in studies]
    return "\n".join(lines) + "\n"


def _varies(points: Sequence[Point], study: str, key: str) -> bool:
    return len({repr(p.cell.get(key)) for p in points if p.study == study}) > 1


def _machine(meta: Mapping) -> str:
    made = meta.get("provenance") or {}
    cpu = made.get("cpu") or made.get("device") or "machine not recorded"
    capability = made.get("cpu_capability")
    date = meta.get("date", "no date")
    return f"{cpu}{', ATen ' + capability if capability else ''}, {date}"


def build_map(stores: Sequence[str | Path], out: str | Path, command: str) -> tuple[Path, Path]:
    """Read ``stores``, write ``when-fpe-pays.png`` and ``when-fpe-pays.md`` into ``out``; returns both paths."""
    studies = [read_study(s) for s in stores]
    points, unplaced = [], 0
    for study in studies:
        found, left = study_points(study)
        points += found
        unplaced += left
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figure = draw(points, studies, out / FIGURE)
    text = page(studies, points, judge_claims(studies, points), unplaced, command)
    markdown = out / PAGE
    markdown.write_text(text, encoding="utf-8")
    return markdown, figure
