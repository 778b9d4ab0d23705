"""Atomic dataset output: write into a hidden temporary sibling, rename into place at the end.

An interrupted or failed run (exception, Ctrl+C, SIGTERM) leaves the target untouched: either the
previous dataset or nothing. A crash that kills the process outright (SIGKILL, power loss) can leave
only a hidden ``.NAME.tmp-XXXX`` folder beside the target, never a half-written dataset under the
target's name. Input files are never deleted: a target that contains an input is refused.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Iterator, List, Optional, Sequence

from ..errors import InputError, OutputExistsError

#: Entries whose presence marks a folder as a dataset (ours or nerfstudio's ns-process-data output).
DATASET_MARKERS = ("transforms.json", "vggsfm_report.json", "colmap", "images", "sparse_pc.ply")


_PROCESS_TEMP_DIRS: List[Path] = []
_PROCESS_TEMP_LOCK = threading.Lock()


def _remove_process_temp_dirs() -> None:
    for d in _PROCESS_TEMP_DIRS:
        shutil.rmtree(d, ignore_errors=True)


def process_temp_dir(prefix: str) -> Path:
    """A new temporary folder (system temp dir) that is deleted when the Python process exits.

    For intermediate files of API calls that were given no ``work_dir`` (decoded video frames,
    depth maps spilled to disk): they must outlive the call that made them, since the returned
    :class:`~vggsfm_ns.types.FrameSet` points at them, but not the process.

    Raises:
        OSError: the folder cannot be created.
    """
    d = Path(tempfile.mkdtemp(prefix=prefix))
    with _PROCESS_TEMP_LOCK:
        if not _PROCESS_TEMP_DIRS:
            atexit.register(_remove_process_temp_dirs)
        _PROCESS_TEMP_DIRS.append(d)
    return d


#: Names a dataset folder may hold besides :data:`DATASET_MARKERS`: what ``export_nerfstudio`` writes
#: (downscaled copies ``images_N``, ``masks``, ``depths``, ``dense_pc.ply``, ``visuals``) and what
#: nerfstudio's own ``ns-process-data`` converters write (``depth``, ``point_cloud.ply``, ...).
#: ``--overwrite`` replaces such a folder only when it holds nothing else.
DATASET_ENTRIES = frozenset(DATASET_MARKERS) | {
    "masks", "depths", "depth", "dense_pc.ply", "visuals", "point_cloud.ply", "reconstruction.ply", "temp_images",
}
_DOWNSCALED = re.compile(r"^(images|masks|depths)_\d+$")


def _foreign_entries(path: Path) -> List[str]:
    """Entries of a dataset folder that no dataset writer makes (the user's own files)."""
    return sorted(p.name for p in path.iterdir() if p.name not in DATASET_ENTRIES and not _DOWNSCALED.match(p.name))


def is_dataset(path: Path) -> bool:
    """True when ``path`` is a folder holding a nerfstudio/vggsfm dataset (see :data:`DATASET_MARKERS`)."""
    path = Path(path)
    return path.is_dir() and any((path / m).exists() for m in DATASET_MARKERS)


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
        return True
    except ValueError:
        return False


def check_output_dir(target: Path, overwrite: bool = False, inputs: Sequence[Optional[Path]] = ()) -> None:
    """Check, before any work is done, that a dataset can be written to ``target``.

    Accepted: a missing folder, an empty folder, or (with ``overwrite``) an existing dataset that
    contains none of ``inputs`` and nothing but dataset entries (:data:`DATASET_ENTRIES`).

    Args:
        target: the dataset folder to be written.
        overwrite: allow replacing an existing dataset.
        inputs: the user's input paths (video, image folder, mask folder); they must not lie inside
            a folder that will be replaced.

    Raises:
        OutputExistsError: if ``target`` is a file or lies inside one, holds a dataset and ``overwrite`` is False, or
            holds other files, alone or beside a dataset (never replaced, even with ``overwrite``).
        InputError: if an input lies inside a non-empty ``target``.
    """
    target = Path(target)
    if not target.exists():
        parent = next((q for q in target.absolute().parents if q.exists()), None)
        if parent is not None and not parent.is_dir():
            raise OutputExistsError(f"is inside {parent}, which is a file, not a folder; choose another --output-dir", target)
        return
    if not target.is_dir():
        raise OutputExistsError("exists and is not a folder; choose another --output-dir", target)
    if not any(target.iterdir()):
        return
    for inp in inputs:
        if inp is not None and _inside(Path(inp), target):
            raise InputError(
                f"the output folder {target} contains this input; replacing it would delete the input, choose another --output-dir",
                inp,
            )
    if not is_dataset(target):
        raise OutputExistsError("exists and holds files that are not a dataset; choose a new or empty --output-dir", target)
    if not overwrite:
        raise OutputExistsError("already holds a dataset; pass --overwrite to replace it", target)
    foreign = _foreign_entries(target)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise OutputExistsError(
            f"holds a dataset and other files ({shown}); --overwrite replaces the whole folder, so move "
            "them out or choose another --output-dir",
            target,
        )


@contextlib.contextmanager
def _term_as_exit() -> Iterator[None]:
    """Turn SIGTERM into ``SystemExit(143)`` while the block runs, so cleanup handlers run."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # pragma: no cover - exotic platforms
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _missing_parents(path: Path) -> List[Path]:
    out = []
    p = path.parent
    while not p.exists():
        out.append(p)
        p = p.parent
    return out


@contextlib.contextmanager
def atomic_output_dir(target: Path, overwrite: bool = False, inputs: Sequence[Optional[Path]] = ()) -> Iterator[Path]:
    """Context manager yielding a temporary folder that becomes ``target`` when the block succeeds.

    Example::

        with atomic_output_dir(Path("scene"), overwrite=False) as tmp:
            (tmp / "transforms.json").write_text("{}")
        # scene/transforms.json now exists; on an exception nothing was written

    On success the temporary folder ``target.parent/.NAME.tmp-XXXX`` is renamed to ``target``
    (an old dataset is first moved aside and deleted only after the rename; an existing empty
    ``target`` is filled in place instead, see :func:`_move_into_empty`). On any exception,
    KeyboardInterrupt or SIGTERM the temporary folder (and any parent folders this call created)
    is removed and the exception propagates.

    Raises:
        OutputExistsError, InputError: see :func:`check_output_dir` (checked again at commit time).
    """
    target = Path(target).expanduser().absolute()
    check_output_dir(target, overwrite, inputs)
    created = _missing_parents(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    committed = False
    try:
        with _term_as_exit():
            yield tmp
            check_output_dir(target, overwrite, inputs)
            _commit(tmp, target)
            committed = True
    finally:
        if not committed:
            shutil.rmtree(tmp, ignore_errors=True)
            for p in created:  # deepest first
                with contextlib.suppress(OSError):
                    p.rmdir()


#: Moved last into an existing empty target, so that a folder without them is never a finished dataset.
_MOVED_LAST = ("vggsfm_report.json", "transforms.json")


def _move_into_empty(tmp: Path, target: Path) -> None:
    """Move the entries of ``tmp`` into the existing empty folder ``target`` (then remove ``tmp``).

    The folder itself stays (same inode): a shell whose working directory it is (``--output-dir .``)
    sees the dataset. Each move is a rename on one file system; on any failure the entries already
    moved go back to ``tmp``, so ``target`` is left empty.
    """
    entries = [q for q in sorted(tmp.iterdir()) if q.name not in _MOVED_LAST]
    entries += [tmp / n for n in _MOVED_LAST if (tmp / n).exists()]
    moved: List[str] = []
    try:
        for entry in entries:
            os.rename(entry, target / entry.name)
            moved.append(entry.name)
    except BaseException:
        for name in reversed(moved):
            with contextlib.suppress(OSError):
                os.rename(target / name, tmp / name)
        raise
    tmp.rmdir()


def _commit(tmp: Path, target: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    if target.exists():
        if not any(target.iterdir()):
            _move_into_empty(tmp, target)
            return
        backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        backup.rmdir()
        os.rename(target, backup)
        try:
            os.rename(tmp, target)
        except BaseException:
            os.rename(backup, target)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.rename(tmp, target)
