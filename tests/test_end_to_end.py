"""End to end on real data: ``ns-process-data vggsfm`` on the bundled video and on the kitchen images,
and the Python API workflow of the README. The dataset must load in nerfstudio and its points must
reproject onto their observations through nerfstudio's cameras.

These need the whole pipeline (``vggsfm_ns.api.reconstruct``, trackers, back end) and run on CPU
with the weight-free trackers when no checkpoint is cached.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "assets" / "sample" / "video.mp4"
NS_PROCESS_DATA = "import sys; from nerfstudio.scripts.process_data import entrypoint; sys.argv[0] = 'ns-process-data'; sys.exit(entrypoint())"

pytestmark = pytest.mark.slow


def _ns_process_data(args, timeout=1800):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", NS_PROCESS_DATA, "vggsfm", *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def _check_dataset(out: Path, n_in: int, min_registered: int, size) -> dict:
    """Common checks; returns the report."""
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    import pycolmap

    tf = json.loads((out / "transforms.json").read_text())
    rep = json.loads((out / "vggsfm_report.json").read_text())
    s = rep["summary"]
    assert s["frames_in"] == n_in == len(list((out / "images").iterdir()))
    assert min_registered <= s["frames_registered"] == len(tf["frames"])
    assert s["points"] >= 1000
    assert s["mean_reproj_error_px"] < 2.0
    assert tf["ply_file_path"] in ("sparse_pc.ply", "dense_pc.ply") and (out / tf["ply_file_path"]).is_file()
    assert all((out / f["file_path"]).is_file() for f in tf["frames"])
    w, h = size
    assert (tf.get("w", tf["frames"][0].get("w")), tf.get("h", tf["frames"][0].get("h"))) == (w, h)

    # nerfstudio loads it; its cameras reproject the loaded points onto the COLMAP observations
    dpo = NerfstudioDataParserConfig(data=out, load_3D_points=True, eval_mode="all").setup().get_dataparser_outputs("train")
    assert len(dpo.image_filenames) == s["frames_registered"]
    recon = pycolmap.Reconstruction(str(out / "colmap/sparse/0"))
    ids = sorted(recon.points3D)
    xyz = dpo.metadata["points3D_xyz"]
    assert xyz.shape[0] == len(ids) if tf["ply_file_path"] == "sparse_pc.ply" else xyz.shape[0] > len(ids)
    if tf["ply_file_path"] == "sparse_pc.ply":
        from test_nerfstudio_load import _project

        row = {pid: r for r, pid in enumerate(ids)}
        errs = []
        for i, p in enumerate(dpo.image_filenames):
            img = recon.find_image_with_name(Path(p).name)
            obs = [(q.xy, row[q.point3D_id]) for q in img.points2D if q.has_point3D()]
            proj = _project(dpo.cameras, i, xyz[[o[1] for o in obs]])
            errs.append(np.linalg.norm(proj - np.array([o[0] for o in obs]), axis=1))
        assert np.concatenate(errs).mean() < 2.0
    return rep


def test_ns_process_data_on_the_sample_video(tmp_path):
    out = tmp_path / "apple"
    r = _ns_process_data(["--data", SAMPLE, "--output-dir", out])
    assert f"ns-train splatfacto --data {out}" in r.stdout
    _check_dataset(out, n_in=50, min_registered=45, size=(1296, 720))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["apple"]  # no work folders left


def test_ns_process_data_on_kitchen_images(tmp_path, shared_data):
    out = tmp_path / "kitchen"
    _ns_process_data(["--data", shared_data / "kitchen" / "images", "--output-dir", out])
    rep = _check_dataset(out, n_in=25, min_registered=23, size=(1558, 1039))
    assert [f["name"] for f in rep["frames"]] == sorted(p.name for p in (shared_data / "kitchen" / "images").iterdir())
    # original bytes copied for the PNG inputs
    first = rep["frames"][0]["name"]
    assert (out / "images" / first).read_bytes() == (shared_data / "kitchen" / "images" / first).read_bytes()


def test_python_api_workflow(tmp_path):
    """The README's scripted capture-to-splat workflow."""
    from vggsfm_ns import export_nerfstudio, preset, reconstruct

    cfg = preset("fast")
    cfg.num_frames_target = 20
    result = reconstruct(SAMPLE, cfg, work_dir=tmp_path / "work")
    assert len(result.frames) == 20 and result.frames.ordered
    out = export_nerfstudio(result, tmp_path / "scene")
    _check_dataset(out, n_in=20, min_registered=18, size=(1296, 720))
