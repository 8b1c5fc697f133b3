"""Progress bars on stderr (stdout stays clean for ``--json``)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

stderr = Console(stderr=True)


def progress_bar(*, disable: bool = False) -> Progress:
    """A progress bar that writes to stderr; ``disable`` silences it (tests, quiet mode)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                    console=stderr, disable=disable, transient=False)
