"""Tracker throughput and peak memory: vggsfm-ns vs the official VGGSfM v2 implementation.

Both trackers get the same inputs (seeded random frames and query points) and the same
deterministic weights (``vggsfm_ns.networks.deterministic``, the golden-test rule), and run the
official call sequence: feature maps once (``process_images_to_fmaps``), then one tracker call for
the query points of frame 0 (coarse 6 + fine 6 iterations, score).

Each implementation runs in its own subprocess so peak memory is measured cleanly:

* CPU: the peak resident-set size above the level before the run, sampled every 2 ms (psutil);
* CUDA: ``torch.cuda.max_memory_allocated`` above the level before the run.

Throughput = query points x frames / seconds of the tracker call (feature maps excluded; they
are reported separately). Agreement is reported as the max abs difference of the outputs: the
6-iteration outputs are chaotic with random weights (see the golden README), so they agree only for
``ours-exact`` (bit-exact arithmetic); the smooth 1-iteration outputs (coarse 1 + fine 1 iteration)
are compared for every implementation.

The official code is imported from ``--official-src`` (a checkout of facebookresearch/vggsfm; it
needs ``einops``, e.g. ``pip install --target /tmp/deps einops`` and ``--extra-path /tmp/deps``).
Its package ``__init__`` files pull in pycolmap, hydra and kornia<0.8; the script therefore loads
only the tracker modules and stubs ``hydra.utils.instantiate`` and ``kornia.utils.grid``.
Without ``--official-src`` only our implementation is measured.

Usage::

    python benchmarks/bench_tracker.py --official-src /tmp/vggsfm_official --extra-path /tmp/deps \\
        --frames 8 --points 512 --img-size 512 --threads 2 --write docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------- workers
def _manifest() -> Path:
    golden = Path(os.environ.get("VGGSFM_NS_GOLDEN", REPO / "tests" / "golden" / "vggsfm"))
    return golden / "state_dict_manifest.json"


def _tracker_state_dict():
    from vggsfm_ns.networks import deterministic_state_dict

    sd = deterministic_state_dict(_manifest())
    p = "track_predictor."
    return {k[len(p) :]: v for k, v in sd.items() if k.startswith(p)}


def _build_ours():
    import torch

    from vggsfm_ns.networks.tracker import TrackerPredictor

    with torch.device("meta"):
        tp = TrackerPredictor()
    tp.load_state_dict(_tracker_state_dict(), strict=True, assign=True)
    return tp.eval()


def _import_official(src: Path):
    """Load the official tracker modules without their package ``__init__`` side effects."""
    import importlib

    sys.path.insert(0, str(src))
    for name, sub in (("vggsfm", "vggsfm"), ("vggsfm.models", "vggsfm/models"), ("vggsfm.models.track_modules", "vggsfm/models/track_modules"), ("vggsfm.utils", "vggsfm/utils")):
        mod = types.ModuleType(name)
        mod.__path__ = [str(src / sub)]
        sys.modules[name] = mod
    tri = types.ModuleType("vggsfm.utils.triangulation")
    tri.create_intri_matrix = lambda *a, **k: None  # only imported, not used by the tracker
    sys.modules["vggsfm.utils.triangulation"] = tri
    hydra = types.ModuleType("hydra")
    hydra_utils = types.ModuleType("hydra.utils")
    hydra_utils.instantiate = lambda *a, **k: None
    hydra.utils = hydra_utils
    sys.modules.setdefault("hydra", hydra)
    sys.modules.setdefault("hydra.utils", hydra_utils)
    try:
        importlib.import_module("kornia.utils.grid")
    except ImportError:  # kornia >= 0.8 moved create_meshgrid
        from kornia.geometry import create_meshgrid

        grid = types.ModuleType("kornia.utils.grid")
        grid.create_meshgrid = create_meshgrid
        sys.modules["kornia.utils.grid"] = grid
    blocks = importlib.import_module("vggsfm.models.track_modules.blocks")
    btp = importlib.import_module("vggsfm.models.track_modules.base_track_predictor")
    refine = importlib.import_module("vggsfm.models.track_modules.refine_track")
    tpm = importlib.import_module("vggsfm.models.track_predictor")
    return blocks, btp, refine, tpm


def _build_official(src: Path):
    import torch.nn as nn

    blocks, btp, refine, tpm = _import_official(src)
    cfg = types.SimpleNamespace(MODEL=types.SimpleNamespace(TRACK=types.SimpleNamespace(efficient_corr=False)))
    tp = tpm.TrackerPredictor.__new__(tpm.TrackerPredictor)
    nn.Module.__init__(tp)
    tp.cfg = cfg
    tp.coarse_down_ratio = 2
    tp.coarse_fnet = blocks.BasicEncoder(stride=4, cfg=cfg)
    tp.coarse_predictor = btp.BaseTrackerPredictor(stride=4, corr_levels=5, corr_radius=4, latent_dim=128, hidden_size=384, use_spaceatt=True, depth=6, fine=False, cfg=cfg)
    tp.fine_fnet = blocks.ShallowEncoder(stride=1, cfg=cfg)
    tp.fine_predictor = btp.BaseTrackerPredictor(stride=1, corr_levels=3, corr_radius=3, latent_dim=32, hidden_size=256, use_spaceatt=False, depth=4, fine=True, cfg=cfg)
    tp.load_state_dict(_tracker_state_dict(), strict=True)
    return tp.eval(), refine.refine_track


class _PeakRSS:
    """Peak resident memory (bytes) above the level at start, sampled in a thread."""

    def __init__(self, interval: float = 0.002):
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)

    @property
    def used(self) -> int:
        return self.peak - self.base


def worker(args) -> dict:
    import gc

    import torch

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    S, N, H = args.frames, args.points, args.img_size
    images = torch.rand((1, S, 3, H, H), generator=torch.Generator().manual_seed(0)).to(device)
    query = (torch.rand((1, N, 2), generator=torch.Generator().manual_seed(8)) * (H - 16) + 8).to(device)
    impl = args.worker
    if impl == "official":
        tp, refine_track = _build_official(Path(args.official_src))
    else:
        tp = _build_ours()
        tp.coarse_predictor.exact = tp.fine_predictor.exact = False
        if impl == "ours-exact":
            from vggsfm_ns.networks.blocks import set_exact

            set_exact(tp, True)
    tp = tp.to(device)
    chunk = None
    if impl == "ours":
        from vggsfm_ns.tracks.vggsfm import token_budget

        chunk = token_budget(device)[0]
    gc.collect()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    out = {"impl": impl, "chunk_tokens": chunk}
    with torch.no_grad():
        # smooth agreement check: coarse 1 iteration, fine 1 iteration
        if impl == "official":
            fm = tp.process_images_to_fmaps(images)
            c1, v1 = tp.coarse_predictor(query, fm, iters=1, down_ratio=2)
            f1, s1 = refine_track(images, tp.fine_fnet, tp.fine_predictor, c1[-1], compute_score=True, fine_iters=1)
        else:
            from vggsfm_ns.networks.tracker import refine_tracks

            fm = tp.process_images_to_fmaps(images, frame_chunk=1 if impl == "ours" else None)
            c1, v1 = tp.coarse_predictor(query, fm, iters=1, down_ratio=2, chunk=chunk)
            f1, s1 = refine_tracks(images, tp.fine_fnet, tp.fine_predictor, c1[-1], fine_iters=1, chunk=chunk)
        check = {"iter1_coarse": c1[-1].cpu(), "iter1_vis": v1.cpu(), "iter1_fine": f1.cpu(), "iter1_score": s1.cpu()}
        del fm, c1, v1, f1, s1
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            base_cuda = torch.cuda.memory_allocated(device)
        best = None
        for rep in range(args.repeats):
            with _PeakRSS() as mem:
                sync()
                t0 = time.perf_counter()
                if impl == "official":
                    fmaps = tp.process_images_to_fmaps(images)
                else:
                    fmaps = tp.process_images_to_fmaps(images, frame_chunk=1 if impl == "ours" else None)
                sync()
                t1, c1 = time.perf_counter(), time.process_time()
                if impl == "official":
                    fine, coarse, vis, score = tp(images, query, fmaps=fmaps)
                else:
                    fine, coarse, vis, score = tp(images, query, fmaps=fmaps, chunk=chunk)
                sync()
                t2, c2 = time.perf_counter(), time.process_time()
            if rep == 0:
                out["peak_rss_mb"] = mem.used / 2**20
                if device.type == "cuda":
                    out["peak_cuda_mb"] = (torch.cuda.max_memory_allocated(device) - base_cuda) / 2**20
            if best is None or t2 - t1 < best[1]:
                best = (t1 - t0, t2 - t1, c2 - c1)
            del fmaps
            gc.collect()
        out.update(fmaps_s=best[0], track_s=best[1], track_cpu_s=best[2])
    out["throughput"] = N * S / out["track_s"]
    check.update(fine=fine.cpu(), coarse=coarse.cpu(), vis=vis.cpu(), score=score.cpu())
    torch.save(check, Path(args.tmp) / f"{impl}.pt")
    return out


# ----------------------------------------------------------------------------------------- driver
def _run_worker(impl: str, args, tmp: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", impl, "--tmp", tmp, "--frames", str(args.frames), "--points", str(args.points), "--img-size", str(args.img_size), "--threads", str(args.threads), "--device", args.device, "--repeats", str(args.repeats)]
    if args.official_src:
        cmd += ["--official-src", str(args.official_src)]
    env = dict(os.environ)
    extra = [str(REPO)] + [p for p in args.extra_path]
    env["PYTHONPATH"] = os.pathsep.join(extra + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(f"{impl} worker failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _machine(device: str, threads: int) -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    desc = f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__}, {threads} threads"
    if device.startswith("cuda") and torch.cuda.is_available():
        desc += f", GPU {torch.cuda.get_device_name(0)}"
    return desc


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--official-src", type=Path, default=None, help="checkout of facebookresearch/vggsfm (not vendored)")
    ap.add_argument("--extra-path", action="append", default=[], help="extra sys.path entries for the workers (e.g. where einops is)")
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--points", type=int, default=256)
    ap.add_argument("--img-size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per implementation (the fastest is reported)")
    ap.add_argument("--impls", default="ours,ours-exact,official", help="comma-separated subset")
    ap.add_argument("--write", type=Path, default=None, help="append a section to this markdown file")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return

    impls = [i for i in args.impls.split(",") if i != "official" or args.official_src]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for impl in impls:
            print(f"running {impl} ...", file=sys.stderr, flush=True)
            results[impl] = _run_worker(impl, args, tmp)
        import torch

        outs = {i: torch.load(Path(tmp) / f"{i}.pt") for i in impls}
    ref = "official" if "official" in outs else None
    lines = []
    cmd = "python benchmarks/bench_tracker.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
    lines.append(f"## Tracker: {args.frames} frames x {args.points} query points, {args.img_size} px, {args.device}")
    lines.append("")
    lines.append(f"* Command: `{cmd}`")
    lines.append(f"* Machine: {_machine(args.device, args.threads)}")
    lines.append(f"* Date: {datetime.date.today().isoformat()}")
    lines.append("* Weights: deterministic golden-test weights; inputs: seeded random frames/points; fp32.")
    lines.append("")
    mem_col = "peak CUDA MiB" if args.device.startswith("cuda") else "peak RSS MiB"
    lines.append(f"| implementation | feature maps s | tracker s (CPU s) | throughput (pts x frames / s) | {mem_col} | max abs diff vs official: 6-iter tracks / vis / score | 1-iter tracks / vis / score |")
    lines.append("|---|---|---|---|---|---|---|")
    for impl in impls:
        r = results[impl]
        mem = r.get("peak_cuda_mb", r["peak_rss_mb"])
        if ref and impl != ref:
            o, b = outs[impl], outs[ref]
            full = f"{(o['fine'] - b['fine']).abs().max():.2g} / {(o['vis'] - b['vis']).abs().max():.2g} / {(o['score'] - b['score']).abs().max():.2g}"
            one = f"{(o['iter1_fine'] - b['iter1_fine']).abs().max():.2g} / {(o['iter1_vis'] - b['iter1_vis']).abs().max():.2g} / {(o['iter1_score'] - b['iter1_score']).abs().max():.2g}"
        else:
            full = one = "-"
        lines.append(f"| {impl} | {r['fmaps_s']:.2f} | {r['track_s']:.2f} ({r['track_cpu_s']:.2f}) | {r['throughput']:.1f} | {mem:.0f} | {full} | {one} |")
    if ref:
        r0 = results[ref]
        lines.append("")
        for impl in impls:
            if impl == ref:
                continue
            r = results[impl]
            m0 = r0.get("peak_cuda_mb", r0["peak_rss_mb"])
            m1 = r.get("peak_cuda_mb", r["peak_rss_mb"])
            lines.append(
                f"* {impl}: {r['throughput'] / r0['throughput']:.2f}x the official throughput "
                f"({r0['track_cpu_s'] / r['track_cpu_s']:.2f}x by CPU time), {m1 / max(m0, 1e-9):.2f}x its peak memory."
            )
    text = "\n".join(lines) + "\n"
    print(text)
    if args.write:
        args.write.parent.mkdir(parents=True, exist_ok=True)
        if not args.write.exists():
            args.write.write_text("# Benchmarks\n\nSections are appended by the scripts in `benchmarks/`; each names its command, machine and date.\n")
        with open(args.write, "a") as f:
            f.write("\n" + text)


if __name__ == "__main__":
    main()
