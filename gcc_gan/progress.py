"""Progress display for long work (compile steps, tuning, training): shown on stderr when it is
a terminal, silent in pipelines and CI, so logs stay clean."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)


def _progress(*columns) -> Progress:
    return Progress(*columns, console=Console(stderr=True), transient=True,
                    disable=not sys.stderr.isatty())


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[], None]]:
    """A bar of `total` steps; yields `advance()`."""
    progress = _progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                         TimeElapsedColumn(), TimeRemainingColumn())
    with progress:
        task = progress.add_task(description, total=total)
        yield lambda: progress.advance(task)


@contextmanager
def steps() -> Iterator[Callable]:
    """A spinner per named step: `with steps() as step: with step("lowering"): ...`."""
    progress = _progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())

    @contextmanager
    def step(description: str):
        task = progress.add_task(description, total=None)
        try:
            yield
        finally:
            progress.remove_task(task)

    with progress:
        yield step
