#!/usr/bin/env python
"""Our weight-free pipeline vs COLMAP (through pycolmap) on the same images, in one process.

For each scene: pycolmap's own pipeline (SIFT extraction, exhaustive or sequential matching,
incremental mapping) with its defaults and/or with the settings ``ns-process-data images`` uses
(``--colmap-settings``), and ``vggsfm_ns.reconstruct`` with each requested preset and tracker, each
``--repeats`` times (the median run is reported, with the range of its times). Prints a table of
seconds per stage, frames registered, points, mean reprojection error and, where the scene has
reference poses (``transforms.json`` or a COLMAP model given with ``--reference``), RRA/RTA@5 and
AUC@30 with the VGGSfM paper's metric (``vggsfm_ns.metrics``).

Usage::

    python benchmarks/bench_sfm.py ../shared/data/dtu_scan24 ../shared/data/kitchen \
        --trackers sift klt --colmap exhaustive --colmap-settings defaults nerfstudio \
        --markdown docs/benchmarks.md

A scene argument is a folder with ``images/`` (and optionally ``transforms.json``), or an image
folder itself. Not a test: run by hand; results go to ``docs/benchmarks.md`` with ``--markdown``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vggsfm_ns.metrics import evaluate_poses, load_reference_poses  # noqa: E402


def _image_dir(scene: Path) -> Path:
    return scene / "images" if (scene / "images").is_dir() else scene


def _reference(scene: Path, explicit: Optional[Path]):
    src = explicit or (scene / "transforms.json" if (scene / "transforms.json").is_file() else None)
    return load_reference_poses(src) if src is not None else None


#: COLMAP configurations: ``defaults`` is pycolmap's own; ``nerfstudio`` is what
#: ``ns-process-data images`` runs (nerfstudio 1.1.5 ``colmap_utils.run_colmap``): one shared OPENCV
#: camera, the mapper's global BA to a function tolerance of 1e-6, then a bundle adjustment that
#: also refines the principal point (its default vocabulary-tree matching needs a download, so the
#: matcher is the one given by ``--colmap``, as with ``--matching-method exhaustive``).
COLMAP_SETTINGS = ("defaults", "nerfstudio")


def run_colmap(scene: Path, matching: str, num_threads: int, settings: str = "defaults") -> Dict:
    """pycolmap's COLMAP pipeline with the given settings; returns timings, counts and poses by stem."""
    import pycolmap

    if settings not in COLMAP_SETTINGS:
        raise ValueError(f"unknown COLMAP settings {settings!r}; choose one of {COLMAP_SETTINGS}")
    ns = settings == "nerfstudio"
    images = _image_dir(scene)
    work = Path(tempfile.mkdtemp(prefix="bench_colmap_"))
    try:
        db = work / "database.db"
        t = {}
        t0 = time.perf_counter()
        ext = pycolmap.FeatureExtractionOptions()
        ext.num_threads = num_threads
        reader = pycolmap.ImageReaderOptions()
        mode = pycolmap.CameraMode.AUTO
        if ns:
            reader.camera_model = "OPENCV"
            mode = pycolmap.CameraMode.SINGLE
        pycolmap.extract_features(db, images, camera_mode=mode, reader_options=reader, extraction_options=ext, device=pycolmap.Device.cpu)
        t["features"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        mopts = pycolmap.FeatureMatchingOptions()
        mopts.num_threads = num_threads
        if matching == "sequential":
            pycolmap.match_sequential(db, matching_options=mopts, device=pycolmap.Device.cpu)
        else:
            pycolmap.match_exhaustive(db, matching_options=mopts, device=pycolmap.Device.cpu)
        t["matching"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        opts = pycolmap.IncrementalPipelineOptions()
        opts.num_threads = num_threads
        if ns:
            opts.ba_global_function_tolerance = 1e-6
        maps = pycolmap.incremental_mapping(db, images, work / "sparse", options=opts)
        t["mapping"] = time.perf_counter() - t0
        if not maps:
            return {"timings": t, "registered": 0, "points": 0, "reproj": float("nan"), "poses": {}, "num_images": len(list(images.iterdir()))}
        rec = max(maps.values(), key=lambda r: r.num_reg_images())
        note = ""
        if 0 in maps and maps[0].num_reg_images() < rec.num_reg_images():
            # ns-process-data converts sparse/0 only: here that is not the largest model
            note = f"sparse/0 holds {maps[0].num_reg_images()} images; the largest model is scored"
        if ns:  # then `colmap bundle_adjuster --BundleAdjustment.refine_principal_point 1`
            t0 = time.perf_counter()
            ba = pycolmap.BundleAdjustmentOptions()
            ba.refine_principal_point = True
            pycolmap.bundle_adjustment(rec, ba)
            t["refine intrinsics"] = time.perf_counter() - t0
        poses = {Path(im.name).stem: im.cam_from_world().matrix() for im in rec.images.values() if im.has_pose}
        return {
            "timings": t,
            "registered": rec.num_reg_images(),
            "points": rec.num_points3D(),
            "reproj": rec.compute_mean_reprojection_error(),
            "poses": poses,
            "note": note,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_ours(scene: Path, tracker: str, preset: str) -> Dict:
    """``vggsfm_ns.reconstruct`` with the given tracker; returns timings, counts and poses by stem."""
    from vggsfm_ns.config import preset as make_preset
    from vggsfm_ns.api import reconstruct

    cfg = make_preset(preset)
    cfg.track.tracker = tracker
    t0 = time.perf_counter()
    res = reconstruct(_image_dir(scene), cfg)
    total = time.perf_counter() - t0
    rec = res.sfm.reconstruction
    poses = {Path(im.name).stem: im.cam_from_world().matrix() for im in rec.images.values() if im.has_pose}
    timings = {k: v for k, v in res.timings.items() if k != "total"}
    timings["total"] = total
    return {
        "timings": timings,
        "registered": rec.num_reg_images(),
        "points": rec.num_points3D(),
        "reproj": rec.compute_mean_reprojection_error(),
        "poses": poses,
    }


def main(argv: Optional[List[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenes", nargs="+", type=Path)
    ap.add_argument("--trackers", nargs="*", default=["sift", "klt"])
    ap.add_argument("--preset", nargs="+", default=["default"], help="our presets to run (each with every tracker)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per method; the table shows the median time (and the range)")
    ap.add_argument("--colmap", choices=["exhaustive", "sequential", "none"], default="exhaustive")
    ap.add_argument("--colmap-settings", nargs="+", choices=list(COLMAP_SETTINGS), default=["defaults"],
                    help="COLMAP configurations to run: pycolmap's defaults and/or those of ns-process-data")
    ap.add_argument("--reference", type=Path, default=None, help="reference poses for a single scene")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--markdown", type=Path, default=None, help="append the results to this markdown file")
    args = ap.parse_args(argv)

    rows = []
    for scene in args.scenes:
        ref = _reference(scene, args.reference if len(args.scenes) == 1 else None)
        runs = []
        if args.colmap != "none":
            for st in args.colmap_settings:
                label = f"COLMAP ({args.colmap})" if st == "defaults" else f"COLMAP ({args.colmap}, nerfstudio settings)"
                runs.append((label, lambda s=scene, st=st: run_colmap(s, args.colmap, args.threads, st)))
        for pr in args.preset:
            for tr in args.trackers:
                label = f"vggsfm-ns {tr}" + ("" if pr == "default" else f" (preset {pr})")
                runs.append((label, lambda s=scene, tr=tr, pr=pr: run_ours(s, tr, pr)))
        for name, fn in runs:
            results = []
            for _ in range(max(1, args.repeats)):
                try:
                    r = fn()
                except Exception as e:  # a failed method is a result too
                    r = {"timings": {}, "registered": 0, "points": 0, "reproj": float("nan"), "poses": {}, "error": f"{type(e).__name__}: {e}"}
                r["total"] = r["timings"].get("total", sum(r["timings"].values()))
                results.append(r)
            # the run with the median time stands for the method (COLMAP's mapper is not deterministic)
            results.sort(key=lambda x: x["total"])
            r = results[len(results) // 2]
            total = r["total"]
            spread = f" ({results[0]['total']:.1f}–{results[-1]['total']:.1f})" if len(results) > 1 else ""
            m = evaluate_poses(r["poses"], ref).as_dict() if ref else {}
            n_img = len(ref) if ref else len([p for p in _image_dir(scene).iterdir() if p.is_file()])
            rows.append(
                {
                    "scene": scene.name,
                    "method": name,
                    "seconds": total,
                    "spread": spread,
                    "stages": ", ".join(f"{k} {v:.1f}" for k, v in r["timings"].items() if k != "total"),
                    "registered": f"{r['registered']}/{n_img}",
                    "points": r["points"],
                    "reproj": r["reproj"],
                    "RRA@5": m.get("RRA@5"),
                    "RTA@5": m.get("RTA@5"),
                    "AUC@30": m.get("AUC@30"),
                    "remark": r.get("error", "") or r.get("note", ""),
                }
            )
            print(rows[-1], flush=True)

    header = "| scene | method | seconds | stages (s) | registered | points | reproj (px) | RRA@5 | RTA@5 | AUC@30 |"
    lines = [header, "|" + "---|" * 10]
    fmt = lambda v: "–" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))  # noqa: E731
    for r in rows:
        extra = f" ({r['remark']})" if r["remark"] else ""
        lines.append(
            f"| {r['scene']} | {r['method']}{extra} | {r['seconds']:.1f}{r['spread']} | {r['stages']} | {r['registered']} | {r['points']} | "
            f"{fmt(r['reproj'])} | {fmt(r['RRA@5'])} | {fmt(r['RTA@5'])} | {fmt(r['AUC@30'])} |"
        )
    table = "\n".join(lines)
    print(table)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.markdown:
        cmd = "python " + " ".join([Path(sys.argv[0]).as_posix()] + (argv if argv is not None else sys.argv[1:]))
        machine = f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}, peak RSS {peak_mb:.0f} MB"
        with open(args.markdown, "a") as f:
            f.write(f"\n### SfM: ours vs COLMAP — {datetime.date.today().isoformat()}\n\n")
            f.write(f"Command: `{cmd}`  \nMachine: {machine}\n\n{table}\n")


if __name__ == "__main__":
    main()
