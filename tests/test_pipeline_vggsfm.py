"""The learned pipeline end to end with the deterministic (meaningless) golden weights on real frames.

The weights are pseudo-random, so the poses are not judged; the run must go through every stage on
CPU without error — checkpoint loading, query frames, query points, camera prior, tracks, the
geometric back end, extra points, dense depth (a tiny random Depth-Anything-V2) and the export — and
write a dataset nerfstudio reads.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from test_depth_model import tiny_depth_anything
from vggsfm_ns.api import reconstruct
from vggsfm_ns.config import preset
from vggsfm_ns.export.nerfstudio import export_nerfstudio
from vggsfm_ns.io.frames import load_frames
from vggsfm_ns.networks.deterministic import deterministic_state_dict
from vggsfm_ns.progress import PipelineObserver

GOLDEN_MANIFEST = "tests/golden/vggsfm/state_dict_manifest.json"


class StageLog(PipelineObserver):
    def __init__(self):
        self.stages, self.messages, self.snapshots = [], [], 0

    def stage_finished(self, name, seconds):
        self.stages.append(name)

    def message(self, text, level="info"):
        self.messages.append(text)

    def reconstruction_updated(self, snapshot):
        self.snapshots += 1


@pytest.mark.slow
def test_learned_pipeline_runs_every_stage_with_deterministic_weights(shared_data, tmp_path, monkeypatch):
    from pathlib import Path

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no ALIKED weights: falls back to SIFT
    repo = Path(__file__).resolve().parents[1]
    ckpt = tmp_path / "vggsfm_det.bin"
    torch.save(deterministic_state_dict(repo / GOLDEN_MANIFEST), ckpt)

    frames = load_frames(shared_data / "kitchen" / "images").subset(range(5))
    cfg = preset("default")
    cfg.track.checkpoint = ckpt  # --tracker auto + --checkpoint: the learned tracker
    cfg.track.img_size = 128
    cfg.track.max_query_pts = 96
    cfg.track.query_frame_num = 2
    cfg.sfm.extra_pt_pixel_interval = 32
    cfg.sfm.concat_extra_points = True
    cfg.track.max_image_size = 320
    cfg.depth.dense_depth = True
    cfg.depth.dense_init = True
    cfg.depth.depth_model = str(tiny_depth_anything(tmp_path / "tiny_da"))
    log = StageLog()
    result = reconstruct(frames, cfg, observer=log)

    for stage in ["load model", "camera prior", "feature maps", "tracks", "triangulate + BA", "extra points", "depth"]:
        assert stage in log.stages, (stage, log.stages)
    assert any("ALIKED weights unavailable" in m for m in log.messages)
    assert result.config.track.query_method == "sift" and cfg.track.query_method == "aliked"  # caller's config untouched
    assert result.tracks.source == "vggsfm" and result.tracks.score is not None
    assert result.tracks.num_frames == 5 and result.tracks.num_tracks > 0
    assert log.snapshots >= 1
    sfm = result.sfm
    rec = sfm.reconstruction
    assert rec.num_reg_images() == int(sfm.valid_frame_mask.sum()) >= 2
    assert torch.isfinite(sfm.points3D).all()
    # the robust refinement keeps only observations under max_reproj_error; the model agrees
    assert rec.num_points3D() > 0 and rec.compute_mean_reprojection_error() < cfg.sfm.max_reproj_error
    # tensors and model describe the same cameras (OpenCV cam_from_world, original pixels)
    for img in rec.images.values():
        if img.has_pose:
            i = result.frames.names.index(img.name)
            np.testing.assert_allclose(sfm.extrinsics[i].numpy(), img.cam_from_world().matrix(), atol=1e-6)
    # the depth stages ran (a random depth network may align no frame, hence no dense points)
    assert result.depth is not None and result.dense_points is not None

    out = export_nerfstudio(result, tmp_path / "scene", num_downscales=1)
    meta = json.loads((out / "transforms.json").read_text())
    assert len(meta["frames"]) == int(sfm.valid_frame_mask.sum())
    # the splat init is the dense seed cloud when there is one, else the model's points
    from vggsfm_ns.io.ply import read_ply

    n_dense = len(result.dense_points[0])
    assert meta["ply_file_path"] == ("dense_pc.ply" if n_dense else "sparse_pc.ply")
    xyz, _ = read_ply(out / meta["ply_file_path"])
    assert len(xyz) == (n_dense or rec.num_points3D())

    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    parsed = NerfstudioDataParserConfig(data=out, load_3D_points=True).setup().get_dataparser_outputs("train")
    assert len(parsed.image_filenames) >= 1
    assert np.isfinite(parsed.metadata["points3D_xyz"].numpy()).all()
