"""A spinner with the elapsed time for a long step that has no count to show (data preparation, model
loading, report writing): the terminal is never blank for long. Nothing when ``quiet`` (or without rich)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

#: Steps that end within this many seconds leave no line behind; longer ones say how long they took.
QUIET_BELOW_S = 2.0


@contextlib.contextmanager
def step(description: str, quiet: bool) -> Iterator[Callable[[str], None]]:
    """Show ``description`` with a spinner and the elapsed time while the block runs.

    Yields a function that replaces the description (e.g. ``"preparing data (2/3)"``). The spinner
    line goes when the block ends; a step that took longer than :data:`QUIET_BELOW_S` prints one line
    saying how long.
    """
    if quiet:
        yield lambda text: None
        return
    try:
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
    except ImportError:  # the core without the experiments extra: no spinner
        yield lambda text: None
        return
    started = time.perf_counter()
    shown = [description]
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True) as bar:
        task = bar.add_task(description, total=None)

        def update(text: str) -> None:
            shown[0] = text
            bar.update(task, description=text)

        yield update
    seconds = time.perf_counter() - started
    if seconds >= QUIET_BELOW_S:
        bar.console.print(f"{shown[0]}: done in {seconds:.0f} s", soft_wrap=True, highlight=False)
