#!/usr/bin/env python
"""Seconds and track statistics of the weight-free track sources alone (SIFT, KLT).

For each image folder: :func:`vggsfm_ns.tracks.sift.track_sift`; for each video:
:func:`vggsfm_ns.tracks.klt.track_klt` on every decoded frame. Prints wall and CPU seconds, the
number of tracks, visible tracks per frame (min / median) and mean track length. For scenes with
``transforms.json`` holding per-frame intrinsics (``dtu_scan24``: real ground truth) it also prints
the share of observations within 1 / 2 px (Sampson) of the reference epipolar geometry, measured
against each track's query frame.

Usage::

    python benchmarks/bench_tracks.py ../shared/data/dtu_scan24 ../shared/data/kitchen \
        ../shared/data/fox ../shared/data/apple_video/video.mp4 --threads 2

Not a test: run by hand; copy the table into ``docs/benchmarks.md`` with command, machine and date.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VIDEO_SUFFIXES = {".mp4", ".mov", ".avi", ".mkv", ".webm"}


def _video_frames(path: Path):
    import av

    from vggsfm_ns.types import FrameSet

    arrays = {}
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            arrays[i] = f.to_ndarray(format="rgb24")
    h, w = arrays[0].shape[:2]
    S = len(arrays)
    return FrameSet(names=[f"frame_{i + 1:05d}.png" for i in range(S)], sizes=np.array([[w, h]] * S), paths=[None] * S, arrays=arrays, ordered=True, source=path)


def _gt_accuracy(scene: Path, ts):
    """Share of observations within 1 / 2 px of the reference epipolar geometry, or None."""
    from vggsfm_ns.conventions import corner_to_center, opengl_c2w_to_opencv_w2c
    from vggsfm_ns.tracks.sift import _sampson

    meta_path = scene / "transforms.json"
    if not meta_path.exists():
        return None
    frames = json.loads(meta_path.read_text())["frames"]
    if any("fl_x" not in f for f in frames) or len(frames) != ts.num_frames:
        return None
    K, E = [], []
    for f in sorted(frames, key=lambda f: f["file_path"]):
        cx, cy = corner_to_center(np.array([f["cx"], f["cy"]]))
        K.append(np.array([[f["fl_x"], 0, cx], [0, f["fl_y"], cy], [0, 0, 1.0]]))
        E.append(opengl_c2w_to_opencv_w2c(np.array(f["transform_matrix"])))
    tr, vis, qf = ts.tracks.numpy().astype(np.float64), ts.vis.numpy() > 0.05, ts.query_frames.numpy()
    d = []
    for f in range(ts.num_frames):
        for q in np.unique(qf):
            c = np.nonzero(vis[f] & (qf == q))[0]
            if f == q or c.size == 0:
                continue
            R = E[f][:, :3] @ E[q][:, :3].T
            t = E[f][:, 3] - R @ E[q][:, 3]
            tx = np.array([[0, -t[2], t[1]], [t[2], 0, -t[0]], [-t[1], t[0], 0]])
            F = np.linalg.inv(K[f]).T @ tx @ R @ np.linalg.inv(K[q])
            d.append(_sampson(F, tr[q, c], tr[f, c]))
    d = np.concatenate(d)
    return float((d < 1).mean()), float((d < 2).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("inputs", nargs="+", type=Path, help="scene folders (with images/) or video files")
    ap.add_argument("--threads", type=int, default=2, help="torch / worker threads")
    ap.add_argument("--max-image-size", type=int, default=1024)
    args = ap.parse_args()

    import torch

    from vggsfm_ns.config import TrackConfig
    from vggsfm_ns.io.frames import load_frames
    from vggsfm_ns.tracks.klt import track_klt
    from vggsfm_ns.tracks.sift import track_sift

    torch.set_num_threads(args.threads)
    cfg = TrackConfig(max_image_size=args.max_image_size)
    print(f"# bench_tracks  {datetime.date.today()}  {platform.node()}  {platform.processor() or platform.machine()}  threads={args.threads}")
    print("| input | tracker | frames | size | wall s | CPU s | tracks | per frame min / median | mean length | GT <1px / <2px |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for inp in args.inputs:
        if inp.suffix.lower() in VIDEO_SUFFIXES:
            fs, name, fn = _video_frames(inp), "klt", track_klt
        else:
            fs, name, fn = load_frames(inp / "images" if (inp / "images").is_dir() else inp), "sift", track_sift
        t0, c0 = time.perf_counter(), time.process_time()
        ts = fn(fs, cfg)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        vis = ts.vis.numpy() > 0.05
        counts = vis.sum(1)
        gt = _gt_accuracy(inp, ts) if name == "sift" else None
        gt_s = f"{gt[0] * 100:.1f} % / {gt[1] * 100:.1f} %" if gt else "-"
        print(f"| {inp.name} | {name} | {len(fs)} | {ts.transforms[0].size[0]}x{ts.transforms[0].size[1]} | {wall:.1f} | {cpu:.1f} | "
              f"{ts.num_tracks} | {counts.min()} / {int(np.median(counts))} | {vis.sum(0).mean():.2f} | {gt_s} |", flush=True)


if __name__ == "__main__":
    main()
