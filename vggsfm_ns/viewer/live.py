"""Live inspection of a running reconstruction in the browser (viser 0.2.7).

:func:`start_live_viewer` returns a :class:`LiveViewer`, a :class:`~vggsfm_ns.progress.PipelineObserver`
to pass to :func:`vggsfm_ns.reconstruct` (alone or in :class:`~vggsfm_ns.progress.Observers`):
every ``reconstruction_updated`` snapshot redraws cameras and points, stage progress and messages
show in the side panel. The server binds to localhost unless told otherwise.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import TYPE_CHECKING, Callable, Dict, Optional

import numpy as np

from ..progress import PipelineObserver, ReconstructionSnapshot

if TYPE_CHECKING:  # pragma: no cover
    from ..types import FrameSet
    from .scene import ReconstructionScene

#: Seconds between two GUI updates caused by ``stage_advanced`` (the last one is always shown).
_STAGE_UPDATE_INTERVAL = 0.1


class LiveViewer(PipelineObserver):
    """A viser server showing the reconstruction as it grows.

    Args:
        host: interface to bind (default localhost only; ``"0.0.0.0"`` exposes it on the network).
        port: port to bind; viser moves to the next free port when it is taken (see :attr:`url`).
        title: heading of the side panel.
        max_points: at most this many points are sent to the browser.
        verbose: print the URL (to stderr, through rich).

    Attributes:
        server: the ``viser.ViserServer``.
        scene: the :class:`~vggsfm_ns.viewer.scene.ReconstructionScene` drawing into it.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 7007,
        title: str = "VGGSfM reconstruction",
        max_points: int = 500_000,
        verbose: bool = True,
    ):
        import viser

        from .scene import ReconstructionScene

        self.host = host
        self.server = viser.ViserServer(host=host, port=port, label="vggsfm-ns", verbose=False)
        self.scene: "ReconstructionScene" = ReconstructionScene(self.server, max_points=max_points, title=title)
        self._messages: "collections.deque[str]" = collections.deque(maxlen=8)
        self._stage: Dict[str, list] = {}
        self._last_stage_update = 0.0
        self._stopped = threading.Event()
        self._frame_index: Dict[str, int] = {}
        if verbose:
            from rich.console import Console

            Console(stderr=True).print(f"[bold]vggsfm-ns viewer:[/bold] {self.url}", highlight=False, soft_wrap=True)

    @property
    def url(self) -> str:
        """``http://host:port`` of the page (localhost shown for a wildcard bind)."""
        host = self.host if self.host not in ("0.0.0.0", "", "::") else "localhost"
        return f"http://{host}:{self.server.get_port()}"

    # ------------------------------------------------------------------ images

    def set_frames(self, frames: "FrameSet") -> None:
        """Use ``frames`` for the frustum thumbnails (matched to snapshot frames by name)."""
        self._frame_index = {n: i for i, n in enumerate(frames.names)}

        def thumb(i: int) -> Optional[np.ndarray]:
            snap = self.scene.snapshot
            if snap is None or snap.names[i] not in self._frame_index:
                return None
            return frames.image(self._frame_index[snap.names[i]])

        self.scene.set_thumbnails(thumb)

    def frames_loaded(self, frames: "FrameSet") -> None:
        """Pipeline hook: frames are known, so frustums can show thumbnails (:meth:`set_frames`)."""
        self.set_frames(frames)

    def set_thumbnails(self, fn: Callable[[int], Optional[np.ndarray]]) -> None:
        """Use ``fn(i) -> (H, W, 3) uint8`` (frame ``i`` of the snapshots) for the thumbnails."""
        self.scene.set_thumbnails(fn)

    # ------------------------------------------------------------------ observer

    def stage_started(self, name: str, total: Optional[int] = None) -> None:
        self._stage[name] = [0, total]
        self.scene.set_stage(f"**{name}** ...", 0.0 if total else None)

    def stage_advanced(self, name: str, advance: int = 1, note: Optional[str] = None) -> None:
        st = self._stage.setdefault(name, [0, None])
        st[0] += advance
        now = time.monotonic()
        done, total = st
        if total and done < total and now - self._last_stage_update < _STAGE_UPDATE_INTERVAL:
            return
        self._last_stage_update = now
        count = f"{done} / {total}" if total else f"{done}"
        extra = f" ({note})" if note else ""
        self.scene.set_stage(f"**{name}** {count}{extra}", (done / total) if total else None)

    def stage_finished(self, name: str, seconds: float) -> None:
        self._stage.pop(name, None)
        self.scene.set_stage(f"{name}: done in {seconds:.1f} s", None)

    def message(self, text: str, level: str = "info") -> None:
        mark = {"warning": "⚠ ", "error": "✖ "}.get(level, "")
        self._messages.append(mark + text)
        self.scene.set_messages(list(self._messages))

    def reconstruction_updated(self, snapshot: ReconstructionSnapshot) -> None:
        self.scene.update(snapshot)

    def close(self) -> None:
        """The pipeline ended: the server keeps running until :meth:`stop` (see :meth:`wait`)."""
        self.scene.set_stage("**finished** (Ctrl-C in the terminal closes the viewer)", None)

    # ------------------------------------------------------------------ lifetime

    def stop(self) -> None:
        """Stop the server (idempotent)."""
        if not self._stopped.is_set():
            self._stopped.set()
            self.server.stop()

    def wait(self) -> None:
        """Block until Ctrl-C (or :meth:`stop` from another thread), then stop the server."""
        try:
            while not self._stopped.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()


def start_live_viewer(host: str = "127.0.0.1", port: int = 7007, **kwargs) -> LiveViewer:
    """Start the live viewer and print its URL.

    Args:
        host: interface to bind (localhost by default).
        port: preferred port (the next free one is used when taken; see ``LiveViewer.url``).
        **kwargs: passed to :class:`LiveViewer` (``title``, ``max_points``, ``verbose``).

    Returns:
        The :class:`LiveViewer` (a ``PipelineObserver``); call ``.wait()`` after the run to keep the
        page alive until Ctrl-C, or ``.stop()``.
    """
    return LiveViewer(host=host, port=port, **kwargs)


__all__ = ["LiveViewer", "start_live_viewer"]
