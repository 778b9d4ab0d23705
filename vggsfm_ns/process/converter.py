"""``ns-process-data vggsfm`` / ``vggsfm-ns process``: a video or image folder -> nerfstudio dataset.

:class:`VGGSfMToNerfstudioDataset` is a nerfstudio process-data converter (it subclasses
``BaseConverterToNerfstudioDataset``, not the COLMAP converter, which exits when the COLMAP and
ffmpeg binaries are missing). Field docstrings are the CLI help (tyro). Option names follow
nerfstudio's where one exists (``--data``, ``--output-dir``, ``--num-frames-target``,
``--num-downscales``, ``--camera-type``, ``--verbose``).

The module imports nothing heavy at import time: the ``ns-process-data`` hook imports it whenever
nerfstudio's process-data script is imported.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Literal, Optional

import tyro

from ..config import QUERY_POINT_METHODS, CameraType, ModeName, ReconstructionConfig, TrackerName, preset, unknown_query_methods

try:  # nerfstudio is an optional dependency: vggsfm-ns process works without it.
    from nerfstudio.process_data.base_converter_to_nerfstudio_dataset import BaseConverterToNerfstudioDataset
except Exception:  # pragma: no cover - exercised only without nerfstudio

    @dataclass
    class BaseConverterToNerfstudioDataset:  # type: ignore[no-redef]
        """Stand-in with the fields of nerfstudio's base converter."""

        data: Path
        """Path the data, either a video file or a directory of images."""
        output_dir: Path
        """Path to the output directory."""
        eval_data: Optional[Path] = None
        """Not supported by vggsfm."""
        verbose: bool = False
        """If True, print extra logging."""


Flag = tyro.conf.FlagCreatePairsOff

PresetName = Literal["default", "fast", "video", "dense"]


@dataclass
class VGGSfMToNerfstudioDataset(BaseConverterToNerfstudioDataset):
    """Reconstruct cameras and points with VGGSfM v2 and write a nerfstudio dataset for ns-train splatfacto.

    Works on a video or a folder of images, with the learned VGGSfM tracker or the weight-free KLT/SIFT
    trackers; needs no COLMAP or ffmpeg binary. Options left unset take the value of --preset.
    """

    data: Path
    """Input: a video file or a folder of images (any order, any sizes; EXIF orientation honoured)."""
    output_dir: Path
    """Dataset folder to create (written atomically; an existing dataset needs --overwrite)."""
    eval_data: Optional[Path] = None
    """Not supported: all frames are reconstructed together; nerfstudio holds out eval frames itself."""
    num_frames_target: int = 300
    """Video input: number of frames to extract (the sharpest frame of each equal interval); 0 keeps
    every frame."""
    num_downscales: int = 3
    """Number of times to downscale the images (images_2, images_4, ...), as ns-process-data."""
    preset: PresetName = "default"
    """Named settings: default (official demo), fast, video (sliding window, shared camera), dense
    (extra points + aligned depth + dense splat seed)."""
    mode: Optional[ModeName] = None
    """sparse (all frames at once), video (sliding window for long ordered inputs) or auto.
    Default: the preset's (auto)."""
    tracker: Optional[TrackerName] = None
    """vggsfm (learned, needs the checkpoint), klt (videos), sift (any order) or auto (vggsfm when the
    checkpoint is available, else klt for videos and sift for folders). Default: the preset's."""
    checkpoint: Optional[Path] = None
    """VGGSfM v2 checkpoint file (vggsfm_v2_0_0.bin). Default: the Hugging Face cache."""
    query_method: Optional[str] = None
    """Query point detectors joined with +: aliked, sift, grid. Default: the preset's (aliked)."""
    max_query_pts: Optional[int] = None
    """Maximum query points per query frame. Default: the preset's (2048)."""
    query_frame_num: Optional[int] = None
    """Number of query frames. Default: the preset's (3)."""
    camera_type: Optional[CameraType] = None
    """COLMAP camera model of the output. Default: the preset's (SIMPLE_PINHOLE)."""
    shared_camera: Flag[bool] = False
    """One camera for all frames (frames must have one size). On in the video preset."""
    intrinsics: Optional[Literal["auto", "predict", "exif", "file"]] = None
    """Initial intrinsics: predict (camera predictor), exif (EXIF focal length), file
    (--intrinsics-file) or auto. Default: the preset's (auto)."""
    intrinsics_file: Optional[Path] = None
    """Known intrinsics: JSON with fl_x fl_y cx cy (+ k1 k2 p1 p2), shared or per frame, or a COLMAP
    cameras.txt/cameras.bin. Implies --intrinsics file."""
    fix_intrinsics: Flag[bool] = False
    """Keep the known intrinsics fixed in bundle adjustment."""
    masks: Optional[Path] = None
    """Folder of dynamic-object masks matched to frames by name (non-zero = ignore that pixel).
    Written to the dataset as masks/ (black = ignore)."""
    dense_depth: Flag[bool] = False
    """Estimate monocular depth (Depth-Anything-V2) aligned to the reconstruction; writes depths/."""
    depth_model: Optional[str] = None
    """Depth model: Hugging Face id or local folder. Default: the preset's."""
    dense_init: Flag[bool] = False
    """Write a dense seed point cloud (dense_pc.ply) from the aligned depth for splatfacto (implies
    --dense-depth)."""
    extra_points: Optional[int] = None
    """Add extra points tracked on a grid with this pixel interval (processed frame), appended to the
    point cloud; -1 disables. Default: the preset's."""
    device: str = "auto"
    """Torch device for the networks: auto, cpu, cuda, cuda:1, ..."""
    viewer: Flag[bool] = False
    """Show the reconstruction live in the browser (viser) while it runs."""
    viewer_port: int = 7007
    """Port of the live viewer."""
    visuals: Flag[bool] = False
    """Also write visuals/ (reprojection and track videos, error plots)."""
    overwrite: Flag[bool] = False
    """Replace an existing dataset in --output-dir."""

    def __post_init__(self) -> None:
        # nerfstudio's base class creates output_dir/images here; we write nothing until the run
        # succeeds (the dataset is renamed into place at the end).
        self.data = Path(self.data)
        self.output_dir = Path(self.output_dir)

    def build_config(self) -> ReconstructionConfig:
        """The :class:`~vggsfm_ns.config.ReconstructionConfig`: ``preset(self.preset)`` with every
        option that was set applied on top.

        Raises:
            InputError: if a given file (checkpoint, intrinsics file) does not exist, or an option
                value is out of range.
        """
        from ..errors import InputError

        cfg = preset(self.preset)
        cfg.verbose = bool(self.verbose)
        cfg.device = self.device
        cfg.num_frames_target = int(self.num_frames_target)
        if self.num_frames_target < 0:
            raise InputError(f"--num-frames-target must be >= 0, got {self.num_frames_target}")
        if self.num_downscales < 0:
            raise InputError(f"--num-downscales must be >= 0, got {self.num_downscales}")
        if self.mode is not None:
            cfg.mode = self.mode
        t = cfg.track
        if self.tracker is not None:
            t.tracker = self.tracker
        if self.checkpoint is not None:
            if not Path(self.checkpoint).expanduser().is_file():
                raise InputError("checkpoint file not found", self.checkpoint)
            t.checkpoint = Path(self.checkpoint).expanduser()
        if self.query_method is not None:
            unknown = unknown_query_methods(self.query_method)
            if unknown:
                raise InputError(
                    f"--query-method {self.query_method!r}: unknown {', '.join(map(repr, unknown))}; "
                    f"choose from {', '.join(QUERY_POINT_METHODS)} joined with '+'"
                )
            t.query_method = self.query_method
        if self.max_query_pts is not None:
            if self.max_query_pts <= 0:
                raise InputError(f"--max-query-pts must be positive, got {self.max_query_pts}")
            t.max_query_pts = int(self.max_query_pts)
        if self.query_frame_num is not None:
            if self.query_frame_num <= 0:
                raise InputError(f"--query-frame-num must be positive, got {self.query_frame_num}")
            t.query_frame_num = int(self.query_frame_num)
        c = cfg.camera
        if self.camera_type is not None:
            c.camera_type = self.camera_type
        if self.shared_camera:
            c.shared_camera = True
        if self.intrinsics is not None:
            c.intrinsics = self.intrinsics
        if self.intrinsics_file is not None:
            if not Path(self.intrinsics_file).expanduser().is_file():
                raise InputError("intrinsics file not found", self.intrinsics_file)
            c.intrinsics_file = Path(self.intrinsics_file).expanduser()
            if self.intrinsics is None:
                c.intrinsics = "file"
        if c.intrinsics == "file" and c.intrinsics_file is None:
            raise InputError("--intrinsics file needs --intrinsics-file")
        if self.fix_intrinsics:
            c.fix_intrinsics = True
        d = cfg.depth
        if self.dense_depth or self.dense_init:
            d.dense_depth = True
        if self.dense_init:
            d.dense_init = True
        if self.depth_model is not None:
            d.depth_model = self.depth_model
        if self.extra_points is not None:
            cfg.sfm.extra_pt_pixel_interval = int(self.extra_points)
            cfg.sfm.concat_extra_points = self.extra_points > 0
        return cfg

    # ------------------------------------------------------------------------------------------

    def main(self) -> None:
        """Run the conversion; user errors print one red line and exit with their exit code."""
        run_cli(self._run_reporting_interrupts)

    def _output_path(self) -> Path:
        """``--output-dir`` as an absolute path (``.`` must have a real parent for the work folder)."""
        return Path(self.output_dir).expanduser().absolute()

    def _run_reporting_interrupts(self) -> None:
        """:meth:`_run`; a Ctrl+C that lands after the dataset was committed says so (exit 130)."""
        started = time.time()
        try:
            self._run()
        except KeyboardInterrupt:
            tf = self._output_path() / "transforms.json"
            with contextlib.suppress(OSError):
                if tf.stat().st_mtime >= started - 1.0:  # written by this run (atomic rename keeps mtime)
                    from rich.console import Console

                    Console(stderr=True).print(
                        f"[bold red]Interrupted[/bold red] after the dataset was written to {tf.parent}.",
                        soft_wrap=True,
                        highlight=False,
                    )
                    sys.exit(130)
            raise

    def _run(self) -> None:
        from rich.console import Console

        from ..errors import InputError
        from ..io.atomic import check_output_dir

        if self.eval_data is not None:
            raise InputError(
                "--eval-data is not supported by vggsfm: all frames are reconstructed together; "
                "nerfstudio holds out evaluation frames itself (eval_mode)"
            )
        data = Path(self.data).expanduser()
        out = self._output_path()
        masks = Path(self.masks).expanduser() if self.masks is not None else None
        if not data.exists():
            raise InputError("input not found", data)
        if masks is not None and not masks.is_dir():
            raise InputError("mask folder not found", masks)
        check_output_dir(out, self.overwrite, inputs=[data, masks])
        cfg = self.build_config()

        from ..io.frames import check_uniform_size, load_frames  # imports torch: after the cheap checks
        from ..io.images import decoded_image_cache
        from ..progress import Observers, RichProgress

        console = Console(stderr=True)
        if self.verbose:
            from ..config import as_dict

            console.print_json(json.dumps(as_dict(cfg)))
        # transient: the bars vanish when the run ends (the summary table repeats the timings), so a
        # failing run prints only its one-line error.
        progress = RichProgress(console=console, transient=True)
        viewer = None
        if self.viewer:
            from ..viewer.live import start_live_viewer

            viewer = start_live_viewer(port=self.viewer_port)  # prints its URL
        observer = Observers([progress, viewer])

        work_parent = out.parent if out.parent.is_dir() else None
        ok = False
        work: Optional[Path] = None
        try:
            work = Path(tempfile.mkdtemp(prefix=f".{out.name}.work-", dir=work_parent))
            # each image is decoded once for the whole conversion (checks, features, colours, export)
            with decoded_image_cache():
                t0 = time.perf_counter()
                frames = load_frames(data, masks=masks, num_frames_target=cfg.num_frames_target, work_dir=work, observer=observer)
                t_frames = time.perf_counter() - t0
                if cfg.camera.shared_camera:
                    check_uniform_size(frames)
                from ..api import reconstruct
                from ..export.nerfstudio import export_nerfstudio

                result = reconstruct(frames, cfg, observer=observer, work_dir=work)
                if "frames" not in result.timings:  # frames were loaded here, not inside reconstruct
                    result.timings = {"frames": t_frames, **result.timings}
                export_nerfstudio(
                    result, out, num_downscales=self.num_downscales, overwrite=self.overwrite, observer=observer, visuals=self.visuals
                )
                written: List[Path] = sorted((out / "visuals").iterdir()) if self.visuals else []
            ok = True
        finally:
            progress.close()
            if work is not None:
                _remove_tree(work)
            if viewer is not None and not ok:
                _stop_viewer(viewer)

        from ..report import print_summary

        report = None
        with contextlib.suppress(OSError, ValueError):
            report = json.loads((out / "vggsfm_report.json").read_text())
        print_summary(result, output_dir=out, console=Console(), report=report)
        for p in written:
            Console().print(f"visual: {p}", highlight=False, soft_wrap=True)
        if viewer is not None:
            viewer.close()  # the pipeline ended; the page stays up
            console.print("The viewer keeps running; press Ctrl+C to exit.", highlight=False)
            try:
                viewer.wait()
            except KeyboardInterrupt:
                pass
            finally:
                _stop_viewer(viewer)


def _remove_tree(path: Path) -> None:
    """``shutil.rmtree`` that finishes even when a second Ctrl+C arrives meanwhile (then re-raised)."""
    interrupted = False
    for _ in range(3):
        try:
            shutil.rmtree(path, ignore_errors=True)
            break
        except KeyboardInterrupt:
            interrupted = True
    if interrupted:
        raise KeyboardInterrupt


def _stop_viewer(viewer) -> None:
    """Stop a live viewer's server (``stop()`` when it has one, else ``close()``); never raises."""
    with contextlib.suppress(Exception):
        (getattr(viewer, "stop", None) or viewer.close)()


def run_cli(fn) -> None:
    """Call ``fn()``; turn user-facing errors into one red line on stderr and a non-zero exit.

    * :class:`~vggsfm_ns.errors.VggsfmError`: its message, exit code ``exit_code``.
    * ``KeyboardInterrupt``: "interrupted", exit 130 (no dataset was written: output is atomic).
    * torch out-of-memory: advice on lowering memory use, exit 4.
    * ``OSError`` (disk full, no permission, read-only file system): the file and the system's
      reason, exit 2 (the output is atomic, so nothing half-written stays behind).
    * any other exception (a bug): its traceback, then exit 1.

    nerfstudio's ``ns-process-data`` entry point catches ``ValueError``/``RuntimeError`` and exits 0,
    so failures must leave through ``SystemExit`` here.
    """
    from rich.console import Console
    from rich.markup import escape

    from ..errors import VggsfmError, short_reason

    err = Console(stderr=True)
    try:
        fn()
    except VggsfmError as e:
        err.print(f"[bold red]Error:[/bold red] {escape(str(e))}", soft_wrap=True, highlight=False)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err.print("[bold red]Interrupted[/bold red]: no dataset was written.", soft_wrap=True, highlight=False)
        sys.exit(130)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        err.print(f"[bold red]Error:[/bold red] {escape(where + short_reason(e))}", soft_wrap=True, highlight=False)
        sys.exit(2)
    except Exception as e:  # noqa: BLE001
        if type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower()[:200]:
            err.print(
                f"[bold red]Error:[/bold red] out of memory ({escape(short_reason(e, 120))}); try --preset fast, a smaller "
                "--num-frames-target or --max-query-pts, or --mode video",
                soft_wrap=True,
                highlight=False,
            )
            sys.exit(4)
        # A bug: show where, and leave with a failure code. Re-raising is not enough: nerfstudio's
        # ns-process-data entry point turns ValueError / RuntimeError into exit 0.
        import traceback

        traceback.print_exc()
        err.print(
            f"[bold red]Error:[/bold red] internal error ({escape(type(e).__name__)}; traceback above). "
            "Please report it with the command line.",
            soft_wrap=True,
            highlight=False,
        )
        sys.exit(1)
