"""The closing summary of a run: per-frame quality, the rich summary table, the next-step commands,
and the quality report written to ``vggsfm_report.json`` (format: ``docs/output_format.md``)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

import numpy as np

from .io.colmap import image_reprojections

if TYPE_CHECKING:  # pragma: no cover
    import pycolmap
    from rich.console import Console

    from .types import ReconstructionResult

#: Report format version (``vggsfm_report.json["version"]``).
REPORT_VERSION = 1
#: A registered frame is *reliable* with at least this many inlier observations ...
RELIABLE_MIN_OBSERVATIONS = 30
#: ... and a mean reprojection error (original pixels) below this.
RELIABLE_MAX_ERROR_PX = 2.0


def _stage_seconds(timings: Dict[str, float]) -> Dict[str, float]:
    """Seconds per stage in run order, then ``total`` = their sum (``reconstruct``'s own ``total``
    is dropped: it leaves out stages run outside it, such as frame loading and export)."""
    stages = {k: round(float(v), 3) for k, v in timings.items() if k != "total"}
    if stages:
        stages["total"] = round(sum(stages.values()), 3)
    return stages


def frame_statistics(recon: "pycolmap.Reconstruction", names: Sequence[str]) -> List[Dict[str, Any]]:
    """Per-frame quality numbers from a COLMAP model.

    Args:
        recon: the model (original pixels, corner convention).
        names: frame names, in FrameSet order; frames are matched to images by name.

    Returns:
        One dict per name: ``name``, ``registered`` (has a pose), ``reliable`` (registered, at least
        :data:`RELIABLE_MIN_OBSERVATIONS` observations, mean error below
        :data:`RELIABLE_MAX_ERROR_PX`), ``num_observations`` (2D points with a 3D point),
        ``mean_reproj_error_px`` (None when there are no observations), ``image_id`` (None when
        the image is not in the model).
    """
    by_name = {img.name: img for img in recon.images.values()}
    out: List[Dict[str, Any]] = []
    for name in names:
        img = by_name.get(name)
        row: Dict[str, Any] = {
            "name": name,
            "registered": False,
            "reliable": False,
            "num_observations": 0,
            "mean_reproj_error_px": None,
            "image_id": int(img.image_id) if img is not None else None,
        }
        if img is not None and img.has_pose:
            row["registered"] = True
            _, _, err = image_reprojections(recon, img)
            if len(err):
                row["num_observations"] = int(len(err))
                err = err[np.isfinite(err)]
                row["mean_reproj_error_px"] = float(err.mean()) if len(err) else None
            e = row["mean_reproj_error_px"]
            row["reliable"] = bool(row["num_observations"] >= RELIABLE_MIN_OBSERVATIONS and e is not None and e < RELIABLE_MAX_ERROR_PX)
        out.append(row)
    return out


def _finite(x: Optional[float]) -> Optional[float]:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def build_report(result: "ReconstructionResult", frames_stats: Optional[List[Dict[str, Any]]] = None) -> Dict[str, Any]:
    """The quality report (``vggsfm_report.json``) of a reconstruction.

    Args:
        result: what :func:`vggsfm_ns.reconstruct` returned.
        frames_stats: precomputed :func:`frame_statistics` (computed when None).

    Returns:
        JSON-serialisable dict: ``version``, ``summary`` (``frames_in``, ``frames_registered``,
        ``frames_reliable``, ``points``, ``observations``, ``mean_reproj_error_px``,
        ``mean_track_length``, ``camera_model``, ``tracker``, ``seconds`` per stage), ``frames`` (see
        :func:`frame_statistics`), ``messages`` and ``config``.
    """
    recon = result.sfm.reconstruction
    if frames_stats is None:
        frames_stats = frame_statistics(recon, result.frames.names)
    n_obs = int(sum(r["num_observations"] for r in frames_stats))
    camera_models = sorted({recon.cameras[img.camera_id].model.name for img in recon.images.values() if img.has_pose})
    summary = {
        "frames_in": len(result.frames),
        "frames_registered": int(sum(r["registered"] for r in frames_stats)),
        "frames_reliable": int(sum(r["reliable"] for r in frames_stats)),
        "points": int(recon.num_points3D()),
        "observations": n_obs,
        "mean_reproj_error_px": _finite(recon.compute_mean_reprojection_error()) if recon.num_points3D() else None,
        "mean_track_length": _finite(recon.compute_mean_track_length()) if recon.num_points3D() else None,
        "camera_model": camera_models[0] if len(camera_models) == 1 else camera_models,
        "tracker": result.tracker or (result.tracks.source if result.tracks is not None else None),
        "seconds": _stage_seconds(result.timings),
    }
    if result.dense_points is not None:
        summary["dense_points"] = int(len(result.dense_points[0]))
    config: Dict[str, Any] = {}
    if result.config is not None:
        from .config import as_dict

        config = as_dict(result.config)
    return {
        "version": REPORT_VERSION,
        "summary": summary,
        "frames": frames_stats,
        "messages": list(result.messages),
        "config": config,
    }


def next_step_commands(output_dir: Path) -> List[str]:
    """The ``ns-train splatfacto`` commands for a dataset (see
    :func:`vggsfm_ns.dataparser.training_commands`): plain, and with the camera optimiser (``SO3xR3``),
    which refines the poses during training (gsplat cannot refine intrinsics)."""
    from .dataparser import training_commands

    return training_commands(output_dir)


def _fmt(x: Optional[float], spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def print_summary(
    result: "ReconstructionResult",
    output_dir: Optional[Path] = None,
    console: Optional["Console"] = None,
    report: Optional[Dict[str, Any]] = None,
) -> None:
    """Print the closing summary table (rich) and, when ``output_dir`` is given, the next commands.

    Rows: frames in / registered / reliable, points, mean reprojection error (px), mean track
    length, seconds per stage (``result.timings``), then the run's messages.
    """
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    report = report or build_report(result)
    s = report["summary"]
    table = Table(title="vggsfm-ns summary", show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("")
    reg_style = "green" if s["frames_registered"] == s["frames_in"] else ("yellow" if s["frames_registered"] >= 0.8 * s["frames_in"] else "red")
    table.add_row("frames registered", f"[{reg_style}]{s['frames_registered']} / {s['frames_in']}[/{reg_style}]")
    table.add_row("reliable frames", f"{s['frames_reliable']} / {s['frames_registered']}")
    table.add_row("3D points", f"{s['points']:,}")
    if "dense_points" in s:
        table.add_row("dense seed points", f"{s['dense_points']:,}")
    table.add_row("mean reprojection error", f"{_fmt(s['mean_reproj_error_px'], '.3f')} px")
    table.add_row("mean track length", _fmt(s["mean_track_length"]))
    if s.get("tracker"):
        table.add_row("tracker", str(s["tracker"]))
    if s.get("camera_model"):
        table.add_row("camera model", str(s["camera_model"]))
    # stages in run order (export included), then their sum (:func:`_stage_seconds`)
    for stage, sec in s["seconds"].items():
        if stage != "total":
            table.add_row(f"  {stage}", f"{sec:.1f} s")
    if "total" in s["seconds"]:
        table.add_row("total", f"{s['seconds']['total']:.1f} s")
    console.print(table)
    unreliable = [r["name"] for r in report["frames"] if r["registered"] and not r["reliable"]]
    missing = [r["name"] for r in report["frames"] if not r["registered"]]
    if missing:
        console.print(f"[yellow]Not registered ({len(missing)}): {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}", soft_wrap=True)
    if unreliable:
        console.print(f"[yellow]Registered but unreliable ({len(unreliable)}): {', '.join(unreliable[:10])}{' ...' if len(unreliable) > 10 else ''}", soft_wrap=True)
    n_reg = s["frames_registered"]
    if n_reg and 2 * s["frames_reliable"] < n_reg:
        console.print(
            f"[bold yellow]Warning: only {s['frames_reliable']} of the {n_reg} registered frames are reliable (at least "
            f"{RELIABLE_MIN_OBSERVATIONS} inlier observations, mean error under {RELIABLE_MAX_ERROR_PX:g} px); expect a "
            "poor splat. More overlapping, textured views help.",
            soft_wrap=True,
        )
    for m in report["messages"]:
        console.print(f"• {m}")
    if output_dir is not None:
        console.print(f"\n[bold green]Dataset written to {output_dir}[/bold green]\nNext step:", soft_wrap=True)
        cmds = next_step_commands(Path(output_dir))
        console.print(f"  {cmds[0]}", soft_wrap=True, highlight=False)
        console.print("or, refining the camera poses during training:")
        console.print(f"  {cmds[1]}", soft_wrap=True, highlight=False)
