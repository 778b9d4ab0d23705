"""Real data with ground truth: ``dtu_scan24`` (49 images, reference cameras in ``transforms.json``).

With the default settings on a CPU, an empty Hugging Face cache and ``HF_HUB_OFFLINE=1`` (so no
weights at all), ``--tracker auto`` falls back to the weight-free SIFT tracks; every image must
register and the poses must score AUC@30 >= 95 against the reference with the VGGSfM paper's metric
(pairwise relative rotation / translation-direction errors, ``vggsfm_ns.metrics``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vggsfm_ns.api import reconstruct
from vggsfm_ns.config import ReconstructionConfig
from vggsfm_ns.metrics import evaluate_poses, load_reference_poses


@pytest.fixture(scope="module")
def dtu_result(shared_data, tmp_path_factory):
    root = shared_data / "dtu_scan24"
    if not (root / "images").is_dir():
        pytest.skip("dtu_scan24 not in the shared data")
    mp = pytest.MonkeyPatch()
    try:
        cache = tmp_path_factory.mktemp("empty_hf_home")
        mp.setenv("HF_HOME", str(cache))
        mp.delenv("HF_HUB_CACHE", raising=False)
        mp.setenv("HF_HUB_OFFLINE", "1")
        res = reconstruct(root / "images", ReconstructionConfig())
    finally:
        mp.undo()
    return root, res


def test_dtu_default_settings_register_all_and_score(dtu_result):
    root, res = dtu_result
    # no weights anywhere: auto picked the SIFT tracker for an unordered image folder
    assert res.tracks.source == "sift"
    assert any(m.startswith("tracker: sift (no VGGSfM checkpoint") for m in res.messages)
    rec = res.sfm.reconstruction
    names = sorted(p.name for p in (root / "images").iterdir())
    assert len(names) == 49
    assert rec.num_reg_images() == 49
    pred = {Path(im.name).stem: im.cam_from_world().matrix() for im in rec.images.values() if im.has_pose}
    assert sorted(pred) == sorted(Path(n).stem for n in names)  # original file names kept
    m = evaluate_poses(pred, load_reference_poses(root))
    print(f"\ndtu_scan24 default/SIFT: {m.as_dict()}")
    assert m.auc[30] >= 95.0
    assert rec.compute_mean_reprojection_error() < 1.5
    assert rec.num_points3D() >= 2000


def test_dtu_intrinsics_plausible(dtu_result):
    """DTU's reference focal length (from ``transforms.json``) is recovered within 3 %."""
    import json

    root, res = dtu_result
    tf = json.loads((root / "transforms.json").read_text())
    fx_ref = float(tf.get("fl_x", tf["frames"][0].get("fl_x")))
    rec = res.sfm.reconstruction
    focals = np.array([cam.mean_focal_length() for cam in rec.cameras.values()])
    assert np.all(np.abs(focals / fx_ref - 1.0) < 0.03), (focals, fx_ref)
