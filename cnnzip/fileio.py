"""Small file helpers shared by every writer: outputs appear whole or not at all."""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from cnnzip.errors import CnnzipError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    A crash or an exception inside the block leaves ``path`` as it was and removes the temporary.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        if tmp.exists():
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would create it
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


MARKER = ".cnnzip-output"  # in a folder atomic_dir wrote: it may replace that folder whole


class OutputError(CnnzipError):
    """An output path that would destroy or escape what is already there."""


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``path``; it replaces ``path`` (nothing, an empty
    folder, or a folder this function wrote, which holds :data:`MARKER`) only if the block
    succeeds, else it is removed and ``path`` is left as it was.

    Raises:
        OutputError: ``path`` is a link, a file, or a folder with content it did not write
            (which replacing it would delete).
    """
    final = Path(path)
    if final.is_symlink():
        raise OutputError(f"{final} is a symbolic link; give a folder path (nothing is "
                          "written through links)")
    if final.exists() and not final.is_dir():
        raise OutputError(f"{final} exists and is not a folder")
    if final.is_dir() and any(final.iterdir()) and not (final / MARKER).is_file():
        raise OutputError(f"{final} is a folder with other content, which writing the output "
                          "there would replace; give a new or empty folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        (tmp / MARKER).write_text("written by cnnzip; the next output here replaces this folder\n")
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
