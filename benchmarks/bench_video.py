#!/usr/bin/env python
"""Frames vs wall time and peak resident memory of the sliding-window video mode.

Each run is a fresh child process (peak RSS = ``ru_maxrss`` of that process); the parent prints a
Markdown table. Two inputs:

* ``synthetic`` (default): a forward walk through a field of points generated along the path
  (40 points per frame, so the scene grows with the sequence like a real capture), observed with the
  back-end tests' noise model (0.5 px, 10 % outliers, 30 % missing) frame by frame on demand
  (:class:`vggsfm_ns.sfm.video.SyntheticWindowSource`); the same scene through the sparse back end
  (``--sparse``) for comparison, whose ``(S, N)`` track tensors are what the video mode avoids;
* ``--real VIDEO``: a real video's frames looped forwards and backwards (ping-pong) to the wanted
  length, KLT tracks per window, frames decoded from disk per window; with ``--sparse`` also KLT over
  the whole sequence + the sparse back end.

Usage::

    python benchmarks/bench_video.py                                   # synthetic, 100 200 400 800
    python benchmarks/bench_video.py --sparse --frames 100 200 400     # + the sparse back end
    python benchmarks/bench_video.py --real ../shared/data/apple_video/video.mp4 --frames 100 200 400

Not a test: run by hand on an otherwise idle machine; results go to ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

POINTS_PER_FRAME = 40


def rss_mb() -> float:
    """Current resident set size (MB) from /proc (Linux)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def forward_scene(S: int, seed: int):
    """Poses, points (sorted along the walk) and K of the synthetic forward walk."""
    from vggsfm_ns.sfm.synthetic import scene_points, trajectory_poses

    rng = np.random.default_rng(seed)
    ext = trajectory_poses("forward", S, rng)
    pts = scene_points("forward", POINTS_PER_FRAME * S, rng, ext)
    pts = pts[np.argsort(pts[:, 2])]
    K = np.tile(np.array([[600.0, 0, 320], [0, 600, 240], [0, 0, 1]]), (S, 1, 1))
    return ext, pts, K


def synthetic_source(ext, pts, K, seed: int):
    """Window source whose per-frame cost does not grow with the scene: each frame only projects the
    points near it along the walk (the walk goes along +z; points lie 2-12 units ahead)."""
    from vggsfm_ns.conventions import resize_transform
    from vggsfm_ns.sfm.synthetic import observe_points
    from vggsfm_ns.sfm.video import SyntheticWindowSource

    S, N = ext.shape[0], pts.shape[0]
    C = -np.einsum("sji,sj->si", ext[:, :, :3], ext[:, :, 3])
    z = pts[:, 2]

    def observe(idx):
        xy = np.zeros((len(idx), N, 2))
        ob = np.zeros((len(idx), N), bool)
        for k, f in enumerate(idx):
            a, b = np.searchsorted(z, [C[f, 2] - 1.0, C[f, 2] + 20.0])
            rng = np.random.default_rng([seed, int(f)])
            x, o, _ = observe_points(pts[a:b], ext[f:f + 1], K[f:f + 1], np.array([[640, 480]]), rng)
            xy[k, a:b], ob[k, a:b] = x[0], o[0]
        return xy, ob

    return SyntheticWindowSource(observe, N, [resize_transform(640, 480, 1024)] * S, seed=seed)


class _PhaseMemory:
    """Observer recording the peak RSS reached before the final bundle adjustment starts."""

    def __init__(self):
        from vggsfm_ns.progress import PipelineObserver

        class Obs(PipelineObserver):
            def __init__(self, outer):
                self.outer = outer

            def stage_started(self, name, total=None):
                if name == "video: final BA":
                    self.outer.peak_before_final = peak_rss_mb()

        self.peak_before_final = None
        self.observer = Obs(self)


def child(args) -> dict:
    import torch

    from vggsfm_ns.config import preset
    from vggsfm_ns.metrics import absolute_trajectory_error
    from vggsfm_ns.types import FrameSet

    S = args.frames[0]
    cfg = preset("video")
    out = {"frames": S}
    phase = _PhaseMemory()
    if args.real:
        from vggsfm_ns.api import TrackerChoice
        from vggsfm_ns.io.frames import load_frames
        from vggsfm_ns.sfm.video import reconstruct_video

        base = load_frames(Path(args.real), work_dir=Path(args.work) / "frames_src")
        n = len(base)
        order = [i for i in list(range(n)) + list(range(n - 2, 0, -1))]
        idx = [order[k % len(order)] for k in range(S)]
        frames = FrameSet(names=[f"loop_{k:05d}.png" for k in range(S)], sizes=base.sizes[idx], paths=[base.paths[i] for i in idx], ordered=True)
        out["rss_start_mb"] = rss_mb()
        t0 = time.perf_counter()
        if args.mode == "sparse":
            from vggsfm_ns.sfm.backend import reconstruct_from_tracks
            from vggsfm_ns.tracks.klt import track_klt

            tracks = track_klt(frames, cfg.track)
            out["tracks"] = tracks.num_tracks
            out["tracking_seconds"] = time.perf_counter() - t0
            res = reconstruct_from_tracks(tracks, frames, cfg.sfm, cfg.camera, seed=0)
        else:
            res, _ = reconstruct_video(frames, cfg, TrackerChoice("klt", None, "bench"), torch.device("cpu"), observer=phase.observer)
        out["seconds"] = time.perf_counter() - t0
        out["ate_rel"] = None
    else:
        if args.mode == "sparse":
            from vggsfm_ns.config import CameraConfig, SfMConfig
            from vggsfm_ns.sfm.backend import reconstruct_from_tracks
            from vggsfm_ns.sfm.synthetic import make_scene

            # the same kind of scene as one dense (S, N) TrackSet (one query frame per 20 frames)
            scene = make_scene(num_frames=S, num_points=POINTS_PER_FRAME * S, trajectory="forward", seed=args.seed,
                               query_frames=list(range(0, S, 20)))
            tracks, ext = scene.tracks, scene.extrinsics
            del scene
            out["rss_start_mb"] = rss_mb()
            t0 = time.perf_counter()
            res = reconstruct_from_tracks(tracks, None, SfMConfig(), CameraConfig(shared_camera=True, camera_type="SIMPLE_RADIAL"), seed=0)
            out["seconds"] = time.perf_counter() - t0
            out["tracks"] = tracks.num_tracks
        else:
            from vggsfm_ns.sfm.video import reconstruct_video

            ext, pts, K = forward_scene(S, args.seed)
            frames = FrameSet(names=[f"f{i:05d}.png" for i in range(S)], sizes=np.array([[640, 480]] * S), paths=[None] * S, ordered=True)
            src = synthetic_source(ext, pts, K, args.seed)
            out["rss_start_mb"] = rss_mb()
            t0 = time.perf_counter()
            res, _ = reconstruct_video(frames, cfg, None, torch.device("cpu"), observer=phase.observer, source=src)
            out["seconds"] = time.perf_counter() - t0
        length = float(np.linalg.norm(np.diff(-np.einsum("sji,sj->si", ext[:, :, :3], ext[:, :, 3]), axis=0), axis=1).sum())
        v = res.valid_frame_mask.numpy()
        out["ate_rel"] = absolute_trajectory_error(res.extrinsics.numpy(), ext, v) / length
    out["peak_rss_mb"] = peak_rss_mb()
    out["peak_before_final_ba_mb"] = phase.peak_before_final
    out["registered"] = int(res.valid_frame_mask.sum())
    out["points"] = int(res.reconstruction.num_points3D())
    out["observations"] = int(res.stats["num_observations"])
    out["reproj_px"] = float(res.stats["mean_reproj_error_px"])
    out["windows"] = res.stats.get("num_windows")
    out["timings"] = {k: round(v, 2) for k, v in res.stats.get("timings", {}).items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, nargs="*", default=[100, 200, 400, 800])
    ap.add_argument("--real", default=None, help="a video (or image folder) looped to the wanted length, KLT tracks")
    ap.add_argument("--sparse", action="store_true", help="also run the sparse back end on the synthetic scenes")
    ap.add_argument("--sparse-max", type=int, default=400, help="largest sequence for the sparse back end (its memory grows as frames x tracks)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="/tmp/bench_video")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="video", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args)))
        return
    Path(args.work).mkdir(parents=True, exist_ok=True)
    import torch

    print(f"# bench_video on {platform.node()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch threads {torch.get_num_threads()}), {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"command: {' '.join(sys.argv)}\n")
    modes = ["video"] + (["sparse"] if args.sparse else [])
    print("| input | mode | frames | wall s | s / frame | peak RSS MB | peak RSS before final BA MB | RSS at start MB | registered | points | observations | reproj px | ATE / length |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in modes:
        for S in args.frames:
            if mode == "sparse" and S > args.sparse_max:
                print(f"| {'real' if args.real else 'synthetic'} | sparse | {S} | not run (above --sparse-max {args.sparse_max}) |")
                continue
            cmd = [sys.executable, __file__, "--child", "--mode", mode, "--frames", str(S), "--seed", str(args.seed), "--work", args.work]
            if args.real:
                cmd += ["--real", args.real]
            r = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
            if r.returncode != 0 or not line:
                print(f"| {'real' if args.real else 'synthetic'} | {mode} | {S} | failed: {(r.stderr or r.stdout).strip().splitlines()[-1][:120]} |")
                continue
            o = json.loads(line[0][7:])
            ate = "-" if o["ate_rel"] is None else f"{100 * o['ate_rel']:.3f} %"
            pbf = "-" if o.get("peak_before_final_ba_mb") is None else f"{o['peak_before_final_ba_mb']:.0f}"
            print(f"| {'real' if args.real else 'synthetic'} | {mode} | {S} | {o['seconds']:.1f} | {o['seconds'] / S:.3f} | {o['peak_rss_mb']:.0f} | {pbf} | "
                  f"{o['rss_start_mb']:.0f} | {o['registered']} | {o['points']} | {o['observations']} | {o['reproj_px']:.2f} | {ate} |", flush=True)
            extra = {k: o[k] for k in ("timings", "tracks", "tracking_seconds") if o.get(k)}
            if extra:
                print(f"<!-- {mode} {S}: {extra} -->", flush=True)


if __name__ == "__main__":
    main()
