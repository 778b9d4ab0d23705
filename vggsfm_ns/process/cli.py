"""``vggsfm-ns``: the package's own command line (works without the ``ns-process-data`` hook).

Subcommands:

* ``vggsfm-ns process --data INPUT --output-dir SCENE [options]``: the same converter as
  ``ns-process-data vggsfm`` (:class:`~vggsfm_ns.process.converter.VGGSfMToNerfstudioDataset`).
* ``vggsfm-ns view SCENE``: inspect a dataset (cameras, points, per-frame quality) in the browser.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, List, Optional, Union

import tyro

from .converter import VGGSfMToNerfstudioDataset, run_cli


@dataclass
class ViewDataset:
    """Open a dataset written by vggsfm-ns (or ns-process-data) in the viser viewer: cameras with their
    images, the point cloud and per-frame quality."""

    path: tyro.conf.Positional[Path]
    """Dataset folder (with transforms.json) or a COLMAP model folder."""
    host: str = "127.0.0.1"
    """Interface to serve on (0.0.0.0 to reach it from another machine)."""
    port: int = 7007
    """Port to serve on."""

    def main(self) -> None:
        """Serve until Ctrl+C."""

        def run() -> None:
            from ..errors import InputError

            if not Path(self.path).exists():
                raise InputError("dataset not found", self.path)
            from ..viewer import view_dataset

            view_dataset(Path(self.path), host=self.host, port=self.port, block=True)

        run_cli(run)


Commands = Union[
    Annotated[VGGSfMToNerfstudioDataset, tyro.conf.subcommand(name="process")],
    Annotated[ViewDataset, tyro.conf.subcommand(name="view")],
]


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry point ``vggsfm-ns``.

    Args:
        argv: arguments without the program name (default: ``sys.argv[1:]``).
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("--version", "-V"):
        from .. import __version__

        print(f"vggsfm-ns {__version__}")
        return
    tyro.extras.set_accent_color("bright_yellow")
    cmd = tyro.cli(Commands, args=args, prog="vggsfm-ns", description="VGGSfM v2 structure from motion for nerfstudio and gsplat.")
    cmd.main()


if __name__ == "__main__":
    main()
