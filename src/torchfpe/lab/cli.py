"""The ``torchfpe`` command line: thin wrappers that parse, call :mod:`torchfpe.lab.api` and print.

Exit codes: 0 success, 1 a runtime error (a result folder that cannot be used, a missing package, an
incomplete report), 2 a usage error (a bad option, value, sweep file or output folder). A user's
mistake is one line on stderr, never a traceback; ``--debug`` shows the traceback of any error.
"""

import enum
import re
from pathlib import Path
from typing import Callable, Optional

import click
import typer

from . import api
from ..core.validation import InvalidParameterError
from .experiments.studies import groups


class _StudyGroups(typer.core.TyperGroup):
    """``torchfpe reproduce <group>``: one command per registered command group, built when it is asked
    for, so that the groups and studies a ``--plugin`` module registers are there too."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(groups())

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        studies = groups().get(name)
        if studies is None:
            return None
        one = typer.Typer()
        one.command(name)(_make_reproduce(name, studies))
        return typer.main.get_command(one)


app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Fixed Parameter Expansion: reproduce the paper's experiments, run sweeps, build reports.")
reproduce_app = typer.Typer(cls=_StudyGroups, no_args_is_help=True, help="Reproduce the paper's experiments.")
app.add_typer(reproduce_app, name="reproduce")


def _print_version(value: bool) -> None:
    if value:
        from .. import __version__

        typer.echo(f"torchfpe {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    plugin: list[str] = typer.Option([], "--plugin", metavar="MODULE",
                                     help="import a module that registers splits, layouts, optimizers or experiments "
                                     "(a module name or a .py file; repeatable); every worker imports it too"),
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Show torchfpe's version and exit."),
) -> None:
    """Options of every command (before the command's name): torchfpe --plugin mine reproduce boolean ..."""
    from . import plugins

    try:
        plugins.load(plugin, owner="torchfpe")
    except (InvalidParameterError, plugins.PluginError) as error:
        _fail(str(error), 2 if isinstance(error, InvalidParameterError) else 1)

BACKEND_CHOICES = ("local", "process", "ray")  # torchfpe.lab.sweep.BACKENDS, without importing the sweep stack
#: Which extra installs a missing module (the CLI names it instead of showing a traceback).
EXTRA_OF = {"ray": "ray", "transformers": "embed", "PIL": "embed", "pyarrow": "parquet", "mnist1d": "data",
            "sklearn": "data"}


Backend = enum.Enum("Backend", {name: name for name in BACKEND_CHOICES}, type=str)


def backend_option():
    return typer.Option(Backend.process.value, "--backend",
                        help="local (in this process), process (a pool, one thread per process) or ray")


def workers_option():
    return typer.Option(None, "--workers", min=1, help="processes for --backend process (default: all cores)")


def address_option():
    return typer.Option(None, "--address", help="Ray cluster address for --backend ray (e.g. auto); without it Ray "
                        "starts locally")


def device_option():
    return typer.Option("cpu", "--device", help="where to train: cpu, cuda, cuda:N or mps (a runtime option: "
                        "run keys and records are those of any device)")


def layout_option():
    return typer.Option("auto", "--layout", help="layout phase 2 trains expanded models in: auto, masked or packed "
                        "(a runtime option: run keys and records are those of any layout; stacks train masked; "
                        "auto packs where that is measured faster, see torchfpe.lab.train_layout)")


def quiet_option():
    return typer.Option(False, "--quiet", help="no progress bar")


def debug_option():
    return typer.Option(False, "--debug", help="show the traceback of an error")


def _fail(message: str, code: int) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _handled(debug: bool, call: Callable[[], None]) -> None:
    """Run ``call``; turn errors into one line and an exit code (a traceback only with ``--debug``)."""
    try:
        call()
    except (typer.Exit, click.exceptions.Exit, click.ClickException, SystemExit):
        raise
    except (Exception, KeyboardInterrupt) as error:  # noqa: BLE001 - one line; --debug for the traceback
        if debug:
            raise
        _fail(*_error_line(error))


def _error_line(error: BaseException) -> tuple[str, int]:
    """The one line and exit code a user sees: 2 for a usage error, 130 for Ctrl-C, 1 for the rest."""
    if isinstance(error, InvalidParameterError):
        return str(error), 2
    if isinstance(error, KeyboardInterrupt):
        return "interrupted; finished runs are kept in the store: re-run the same command to complete the rest", 130
    if _out_of_memory(error):
        return (f"out of memory while training ({_first_sentence(error)}); lower batch_size (--set batch_size=...) or "
                "the model's size"), 1
    if isinstance(error, ModuleNotFoundError):
        top = (error.name or "").split(".")[0]
        return f"missing Python package {top!r}: pip install 'torchfpe[{EXTRA_OF.get(top, 'experiments')}]'", 1
    if type(error).__module__.startswith("torchfpe."):  # our own errors (store, report, data) are written for the user
        return str(error), 1
    return f"{type(error).__name__}: {error} (re-run with --debug for the traceback)", 1


def _out_of_memory(error: BaseException) -> bool:
    """An allocation that failed: Python's MemoryError, torch's CUDA/MPS OutOfMemoryError or its CPU allocator's."""
    import torch

    if isinstance(error, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    return isinstance(error, RuntimeError) and ("can't allocate memory" in str(error) or "out of memory" in str(error))


def _first_sentence(error: BaseException) -> str:
    """The allocator's own words without its source location (``[enforce fail at alloc_cpu.cpp:127] err == 0.``)."""
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return re.sub(r"^\[enforce fail at [^\]]*\]\s*err == 0\.\s*", "", text).strip()


# ------------------------------------------------------------------------------------------ reproduce
def _make_reproduce(group: str, studies: dict) -> Callable:
    names = list(studies)
    default = "headline" if "headline" in names else names[0]
    Study = enum.Enum(f"{group.title()}Study", {name: name for name in names}, type=str)  # --help lists them

    def reproduce(
        study: Study = typer.Option(default, "--study", help="which study of the group"),
        seeds: Optional[int] = typer.Option(None, "--seeds", min=1, max=api.MAX_SEEDS,
                                            help="seeds 0..N-1 per config (default: the study's)"),
        out: Optional[Path] = typer.Option(None, "--out", help=f"result folder (default runs/{group}-<study>); "
                                           "re-running with the same folder completes only the missing runs"),
        set_: list[str] = typer.Option([], "--set", help="override a config field, read by its type, e.g. --set "
                                       "clauses=12 (a swept field takes a list: --set 'neurons=[8,16]')"),
        embeddings: Optional[Path] = typer.Option(None, "--embeddings", help="embedding file (.npz/.parquet) for "
                                                  "experiments that read one (config field 'embeddings')"),
        data: Optional[Path] = typer.Option(None, "--data", help="data folder for experiments that read one "
                                            "(config field 'data_dir'; lm: a UTF-8 text file or a folder of "
                                            "*.txt files)"),
        backend: Backend = backend_option(),
        workers: Optional[int] = workers_option(),
        address: Optional[str] = address_option(),
        device: str = device_option(),
        layout: str = layout_option(),
        quiet: bool = quiet_option(),
        debug: bool = debug_option(),
    ) -> None:
        def call() -> None:
            experiment = studies[study.value].experiment
            overrides = api.parse_overrides(experiment, set_)
            for name, value in (("embeddings", embeddings), ("data_dir", data)):
                if value is not None:
                    if name not in api.config_fields(experiment):
                        option = "--embeddings" if name == "embeddings" else "--data"
                        raise InvalidParameterError(f"{option} does not apply to study {study.value!r}: the {experiment} "
                                                    f"experiment's config has no {name!r} field")
                    overrides[name] = str(value)
            report = api.run_study(group, study.value, seeds=seeds, overrides=overrides, out=out, backend=backend.value,
                                   workers=workers, address=address, quiet=quiet, command=api.cli_command(),
                                   device=device, layout=layout)
            typer.echo(f"report: {report}")

        _handled(debug, call)

    descriptions = "; ".join(f"{name}: {s.description}" for name, s in studies.items())
    reproduce.__doc__ = f"Reproduce the paper's {group} results (default study: {default}).\n\n\b\n{descriptions}"
    return reproduce


# -------------------------------------------------------------------------------------------- sweep
@app.command()
def sweep(
    sweep_file: Path = typer.Argument(..., help="YAML: experiment, study, grid, base, seeds"),
    out: Optional[Path] = typer.Option(None, help="result folder (default runs/<sweep file name>)"),
    backend: Backend = backend_option(),
    workers: Optional[int] = workers_option(),
    address: Optional[str] = address_option(),
    device: str = device_option(),
    layout: str = layout_option(),
    quiet: bool = quiet_option(),
    debug: bool = debug_option(),
) -> None:
    """Run a sweep file: every combination of its grid × seeds, resumably, then write its report.

    \b
    experiment: boolean        # or theory
    study: neurons             # report layout: headline|neurons|clauses|alpha|metrics|data|theory
    grid: {neurons: [8, 16]}   # fields swept (product)
    base: {clauses: 8}         # fields fixed
    seeds: 10                  # seeds 0..9, or a list [0, 3, 7]
    """
    def call() -> None:
        report = api.run_sweep_file(sweep_file, out=out, backend=backend.value, workers=workers, address=address,
                                    quiet=quiet, command=api.cli_command(), device=device, layout=layout)
        typer.echo(f"report: {report}")

    _handled(debug, call)


# ------------------------------------------------------------------------------------------- report
@app.command()
def report(
    out: Path = typer.Argument(..., help="a result folder written by reproduce or sweep"),
    debug: bool = debug_option(),
) -> None:
    """Rebuild records.csv, report.md and the figures from the result store alone (exit 1 if runs are missing)."""
    def call() -> None:
        try:
            path = api.build_report(out, strict=True, quiet=False)
        except api.IncompleteResultsError as error:
            typer.echo(f"report: {error.report}")
            raise
        typer.echo(f"report: {path}")

    _handled(debug, call)


# ----------------------------------------------------------------------------------------- fidelity
@app.command()
def fidelity(
    stores: list[Path] = typer.Argument(..., metavar="STORE",
                                        help="result folders written by `torchfpe reproduce boolean`"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the markdown tables to this file too"),
    csv: Optional[Path] = typer.Option(None, "--csv", help="write the per-record readings to this CSV file"),
    sections: Optional[str] = typer.Option(None, "--sections", help="comma-separated subset of accuracy, "
                                           "coverage, levels, regression (default: all)"),
    debug: bool = debug_option(),
) -> None:
    """Boolean fidelity analysis of stored runs: accuracy tests, whole-clause cover, metric levels, fits.

    Reads each variant's first-layer weights and regenerates each run's formula from its config.
    """
    def call() -> None:
        typer.echo(api.fidelity(stores, out=out, csv=csv, sections=sections), nl=False)

    _handled(debug, call)


# ---------------------------------------------------------------------------------------------- map
@app.command(name="map")
def fpe_map(
    stores: list[Path] = typer.Argument(..., metavar="STORE", help="result folders (torchfpe reproduce / sweep)"),
    out: Path = typer.Option(Path("docs"), "--out", help="folder for when-fpe-pays.md and when-fpe-pays.png"),
    debug: bool = debug_option(),
) -> None:
    """One map of every measured FPE gain against load per neuron and width, and the paper's claims judged."""
    def call() -> None:
        typer.echo(f"wrote {api.fpe_map(stores, out=out, command=api.cli_command())}")

    _handled(debug, call)


# -------------------------------------------------------------------------------------------- embed
@app.command()
def embed(
    source: str = typer.Argument(..., help="images: a folder (train/ and test/, one subfolder per class) or a built-in "
                                 "image set (fashion-mnist, font-chars); text (with --model all-minilm-l6-v2): "
                                 "fortunes, a folder of .txt files laid out the same way, or a CSV of text,label"),
    model: str = typer.Option(..., "--model", help="efficientnet-lite0|1|2 (offline, ImageNet weights), a CLIP model "
                              "folder or Hugging Face hub name, or all-minilm-l6-v2 (text, offline)"),
    out: Path = typer.Option(..., "--out", help="the embedding file to write (.npz)"),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="images per forward pass"),
    device: str = typer.Option("cpu", "--device", help="torch device, e.g. cpu or cuda"),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=32, help="EfficientNet input size in pixels "
                                             "(default: the model's own, 224 for Lite0)"),
    data: Optional[Path] = typer.Option(None, "--data", help="the raw files of a built-in image set (Fashion-MNIST's "
                                        "IDX folder, a fonts folder for font-chars, or the fortunes folder)"),
    max_length: int = typer.Option(128, "--max-length", min=1, help="text only: tokens per text (longer texts are cut)"),
    quiet: bool = quiet_option(),
    debug: bool = debug_option(),
) -> None:
    """Embed images (or texts) with a frozen model into an .npz file for the embedding-classifier experiments."""
    def call() -> None:
        from ..data.embeddings import EmbeddingFileError, check_output_file

        try:  # before any work: an unwritable --out would otherwise surface after every image is encoded
            check_output_file(out, "--out")
        except EmbeddingFileError as error:
            raise InvalidParameterError(str(error)) from None
        from ..data.textembed import extract_text_embeddings, is_text_encoder_name

        if is_text_encoder_name(model):
            path = extract_text_embeddings(source, out, model=model, batch_size=batch_size, max_length=max_length,
                                           device=device, data_dir=data, quiet=quiet)
            typer.echo(f"embeddings: {path}")
            return
        try:
            from ..data.extract import extract_embeddings
        except ImportError as error:
            if getattr(error, "name", None) in ("torchfpe.data.extract", None) or "extract_embeddings" in str(error):
                _fail("this torchfpe has no embedding extraction yet "
                      "(torchfpe.data.extract.extract_embeddings is missing)", 1)
            raise
        path = extract_embeddings(source, model, out, batch_size=batch_size, device=device, quiet=quiet,
                                  image_size=image_size, data_dir=data)
        typer.echo(f"embeddings: {path}")

    _handled(debug, call)


if __name__ == "__main__":  # pragma: no cover
    app()
