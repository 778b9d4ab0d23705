"""``ns-process-data vggsfm --dense-depth`` on a real scene with a tiny random Depth-Anything-V2:
every registered frame gets a depth file that nerfstudio's own reader loads as z-depth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_depth_model import tiny_depth_anything


@pytest.mark.slow
def test_ns_process_data_dense_depth_statue(shared_data, tmp_path):
    from nerfstudio.data.utils.data_utils import get_depth_image_from_path

    from vggsfm_ns.depth.export import read_colmap_depth

    images = shared_data / "statue" / "images"
    model_dir = tiny_depth_anything(tmp_path / "tiny_da")
    out = tmp_path / "scene"
    exe = Path(sys.executable).with_name("ns-process-data")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [str(exe), "vggsfm", "--data", str(images), "--output-dir", str(out), "--dense-depth", "--depth-model", str(model_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    meta = json.loads((out / "transforms.json").read_text())
    frames = meta["frames"]
    assert len(frames) >= 3
    factor = meta.get("vggsfm_depth_unit_scale_factor", 1e-3)
    assert factor == pytest.approx(1e-3)
    with_depth = compared = 0
    for fr in frames:
        assert "depth_file_path" in fr, fr["file_path"]
        p = out / fr["depth_file_path"]
        assert p.is_file() and p.suffix == ".png"
        h, w = int(fr.get("h", meta.get("h"))), int(fr.get("w", meta.get("w")))
        from PIL import Image

        with Image.open(out / fr["file_path"]) as im:
            assert im.size == (w, h)
        d = get_depth_image_from_path(p, h, w, factor).numpy()[..., 0]
        assert d.shape == (h, w)
        assert np.isfinite(d).all() and (d >= 0).all()
        with_depth += int((d > 0).mean() > 0.01)
        # the COLMAP dense array of the same frame holds the same depth (before mm quantisation)
        b = read_colmap_depth(out / "colmap" / "depths" / Path(fr["depth_file_path"]).with_suffix(".bin").name)
        assert b.shape == (h, w)
        ok = (d > 0) & (b > 0)
        if ok.any():
            assert np.abs(d[ok] - b[ok]).max() <= 0.5e-3 + 1e-6
            compared += 1
        # the two files mark the same pixels valid (a value below half a mm rounds to 0 in the PNG)
        assert not ((d > 0) & (b <= 0)).any()
    # a random network's disparity is not a depth map, but RANSAC still finds an affine map for
    # some frames; rejected frames are written as all-invalid (0)
    assert with_depth >= 1 and compared >= with_depth
