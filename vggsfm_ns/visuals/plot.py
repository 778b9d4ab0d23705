"""``visuals/errors.png``: per-frame mean reprojection error, inlier observations and visible tracks."""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np

from ..types import ReconstructionResult


def write_error_plot(result: ReconstructionResult, path: Path, size_px: Tuple[int, int] = (1200, 700), dpi: int = 100) -> Path:
    """Plot per-frame quality and save it as a PNG of exactly ``size_px``.

    Top panel: mean reprojection error (px, original pixels) of each registered frame, green when
    the frame is reliable and red when not (:func:`vggsfm_ns.report.frame_statistics`), with the
    reliability threshold dashed; unregistered frames are marked with a grey ``x``.
    Bottom panel: inlier observations per frame (bars) and, when tracks exist, visible tracks per
    frame (line), with the minimum-observation threshold dashed.

    Args:
        result: the reconstruction.
        path: output ``.png``.
        size_px: ``(width, height)`` of the image in pixels.
        dpi: rendering resolution (the figure size is ``size_px / dpi`` inches).

    Returns:
        ``path``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .. import report as _report

    names = result.frames.names
    stats = _report.frame_statistics(result.sfm.reconstruction, names)
    S = len(names)
    x = np.arange(S)
    reg = np.array([r["registered"] for r in stats], bool)
    rel = np.array([r["reliable"] for r in stats], bool)
    err = np.array([np.nan if r["mean_reproj_error_px"] is None else r["mean_reproj_error_px"] for r in stats], np.float64)
    nobs = np.array([r["num_observations"] for r in stats], np.int64)

    fig = Figure(figsize=(size_px[0] / dpi, size_px[1] / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    colors = np.where(rel, "tab:green", "tab:red")
    ax1.bar(x[reg], np.nan_to_num(err[reg]), color=colors[reg], width=0.85)
    if (~reg).any():
        ax1.plot(x[~reg], np.zeros((~reg).sum()), "x", color="0.5", label="not registered")
        ax1.legend(loc="upper right", fontsize=8)
    ax1.axhline(_report.RELIABLE_MAX_ERROR_PX, ls="--", color="0.3", lw=1)
    ax1.set_ylabel("mean reproj. error (px)")
    # over all observations (each frame weighted by its observation count), as the summary's figure
    ok = np.isfinite(err) & (nobs > 0)
    mean_all = float((err[ok] * nobs[ok]).sum() / nobs[ok].sum()) if ok.any() else float("nan")
    ax1.set_title(
        f"{int(reg.sum())}/{S} frames registered, {int(rel.sum())} reliable, mean error {mean_all:.2f} px", fontsize=10
    )

    ax2.bar(x, nobs, color=np.where(rel, "tab:blue", "tab:red"), width=0.85, label="inlier observations")
    if result.tracks is not None and result.tracks.num_frames == S:
        vis = result.tracks.valid_mask().sum(dim=1).cpu().numpy()
        ax2.plot(x, vis, color="tab:orange", lw=1.5, label="visible tracks")
    ax2.axhline(_report.RELIABLE_MIN_OBSERVATIONS, ls="--", color="0.3", lw=1)
    ax2.set_ylabel("count")
    ax2.set_xlabel("frame")
    ax2.legend(loc="upper right", fontsize=8)
    if S <= 40:
        ax2.set_xticks(x, [n if len(n) <= 16 else n[:7] + "…" + n[-8:] for n in names], rotation=60, ha="right", fontsize=7)
    fig.tight_layout()
    fig.savefig(str(path), dpi=dpi)
    return Path(path)


__all__ = ["write_error_plot"]
