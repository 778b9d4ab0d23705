"""Exceptions raised for problems the user can fix.

They deliberately do **not** derive from ``ValueError``/``RuntimeError``: nerfstudio's
``ns-process-data`` entry point swallows those two and exits 0. The CLI layers catch
:class:`VggsfmError`, print its one-line message and exit non-zero.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Union


def short_reason(e: BaseException, limit: int = 160) -> str:
    """A one-line reason for a library exception, for our one-line error messages.

    The first non-empty line of ``str(e)`` (an ``OSError``'s ``strerror`` when set), cut at a word
    boundary to at most ``limit`` characters with ``...`` appended; the exception's type name when
    it has no text.
    """
    text = (getattr(e, "strerror", None) or str(e)).strip()
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not line:
        return type(e).__name__
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0] if " " in line[:limit] else line[:limit]
    return cut.rstrip(" ,;:") + "..."


class VggsfmError(Exception):
    """Base class: a problem with the user's input, environment or files, with a one-line message."""

    exit_code: int = 2

    def __init__(self, message: str, path: Optional[Union[str, Path]] = None):
        self.path = Path(path) if path is not None else None
        text = f"{self.path}: {message}" if self.path is not None else message
        super().__init__(text)


class InputError(VggsfmError):
    """Bad input data: missing path, no images, unreadable file, too few frames, ..."""


class OutputExistsError(VggsfmError):
    """The output directory already holds a dataset and ``--overwrite`` was not given."""


class OutputError(VggsfmError):
    """An output file cannot be written (disk full, no permission, read-only file system)."""


class CheckpointError(VggsfmError):
    """A model checkpoint is missing, corrupt or cannot be downloaded; the message says what to fetch."""


class ReconstructionError(VggsfmError):
    """The geometry failed as a whole (e.g. no initial pair, fewer than 2 registered frames)."""

    exit_code = 3
