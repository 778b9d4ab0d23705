#!/usr/bin/env python
"""Speed and accuracy of the geometric back end alone (``reconstruct_from_tracks``) on synthetic scenes.

Scenes come from :func:`vggsfm_ns.sfm.synthetic.make_scene` (0.5 px noise, 10 % outliers, 30 %
missing observations unless changed). Prints seconds per step (two-view geometry, initial pair,
registration, global rounds; and inside them triangulation, bundle adjustment, pose refinement),
registered frames, points, observations, mean reprojection error, RRA/RTA@5, AUC@30 and focal error.

Usage::

    python benchmarks/bench_backend.py                       # DTU-sized scenes (49 frames, 384 px, f = 925)
    python benchmarks/bench_backend.py --frames 150 --points 6000 --trajectory forward

Not a test: run by hand on an otherwise idle machine; results go to ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run(args, missing: float, label: str) -> None:
    from vggsfm_ns.config import CameraConfig, SfMConfig
    from vggsfm_ns.metrics import pose_metrics
    from vggsfm_ns.sfm.backend import reconstruct_from_tracks
    from vggsfm_ns.sfm.synthetic import make_scene
    from vggsfm_ns.threads import cpu_workers

    scene = make_scene(num_frames=args.frames, num_points=args.points, trajectory=args.trajectory,
                       image_size=(args.size, args.size), focal=args.focal, missing_ratio=missing,
                       outlier_ratio=args.outliers, seed=args.seed)
    cpu0, t0 = time.process_time(), time.perf_counter()
    res = reconstruct_from_tracks(scene.tracks, None, SfMConfig(), CameraConfig(camera_type=args.camera_type), seed=0)
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    v = res.valid_frame_mask.numpy()
    m = pose_metrics(res.extrinsics.numpy(), scene.extrinsics, v)
    ferr = np.abs(res.intrinsics[v, 0, 0].numpy() / scene.intrinsics[v, 0, 0] - 1).max()
    print(f"\n## {label}: {args.frames} frames, {scene.tracks.num_tracks} tracks, {int(scene.observed.sum())} observations")
    print(f"wall {wall:.2f} s, process CPU {cpu:.2f} s ({cpu_workers()} worker threads, one torch thread each; Ceres on as many)")
    print("steps (s): " + ", ".join(f"{k} {v:.2f}" for k, v in res.stats["timings"].items()))
    print("inside (s): " + ", ".join(f"{k} {v:.2f}" for k, v in res.stats["step_seconds"].items()))
    print(f"registered {int(v.sum())}/{args.frames}, points {res.stats['num_points']}, observations {res.stats['num_observations']}, "
          f"mean reprojection error {res.stats['mean_reproj_error_px']:.3f} px")
    print(f"RRA@5 {m.rra[5]:.1f}  RTA@5 {m.rta[5]:.1f}  AUC@30 {m.auc[30]:.1f}  max focal error {100 * ferr:.2f} %")
    print("BA rounds (iterations, frames, points, observations, s): "
          + "; ".join(f"{b['iterations']}, {b['frames']}, {b['points']}, {b['observations']}, {b['seconds']:.2f}" for b in res.stats["ba"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=49)
    ap.add_argument("--points", type=int, default=4000)
    ap.add_argument("--trajectory", default="arc")
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--focal", type=float, default=925.0)
    ap.add_argument("--outliers", type=float, default=0.1)
    ap.add_argument("--missing", type=float, nargs="*", default=[0.3, 0.85], help="missing-observation ratios to run")
    ap.add_argument("--camera-type", default="SIMPLE_PINHOLE")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print(f"# bench_backend on {platform.node()} ({platform.processor() or platform.machine()}), {time.strftime('%Y-%m-%d %H:%M')}")
    for miss in args.missing:
        run(args, miss, f"missing {int(100 * miss)} %")


if __name__ == "__main__":
    main()
