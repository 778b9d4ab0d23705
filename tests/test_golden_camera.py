"""Golden tests of the camera predictor, DINO ranking and camera averaging
(``camera_predictor_*.pt``, ``camera_avgpose_rank.pt``), deterministic weights, CPU float32.

Robust targets: DINOv2 tokens, ``rgb_feat_init``, every refinement iteration teacher-forced, the
1-iteration end-to-end outputs, the pixel conversion (``EFP_*``) and the DINO ranking. Chaotic
targets (4-iteration poses, ``avg_*``): checked in exact mode (see ``test_golden_tracker.py``).
"""

from __future__ import annotations

import pytest
import torch
from _vggsfm_golden import TOL, assert_close, exact_mode, golden, golden_model, maxerr

from vggsfm_ns.conventions import imagenet_normalize
from vggsfm_ns.geometry.pose_encoding import cameras_to_pixel


@pytest.fixture(scope="module")
def model():
    return golden_model()


@pytest.fixture(scope="module")
def g():
    return golden("camera_predictor_*.pt")


@pytest.fixture(scope="module")
def hf_out(model, g):
    """One DINOv2 pass over the golden images (all tokens and hidden states)."""
    with torch.no_grad():
        return model.camera_predictor.backbone.hf(pixel_values=imagenet_normalize(g["images"]), output_hidden_states=True)


@pytest.fixture(scope="module")
def tokens(model, hf_out):
    """Patch tokens with the layout ``backbone_features`` returns (a view of the token tensor)."""
    R = model.camera_predictor.backbone.hf.config.num_register_tokens
    return hf_out.last_hidden_state[:, 1 + R :]


@pytest.fixture(scope="module")
def rgb_feat_init(model, tokens):
    return model.camera_predictor.image_tokens(tokens, batch_size=1)


def test_golden_dino_tokens(model, g, hf_out, tokens):
    # the public entry point, on image 0
    assert_close("backbone_features img0", model.camera_predictor.backbone_features(g["images"][:1])[0], g["dino_x_norm_patchtokens_img0"])
    assert_close("dino_x_norm_patchtokens_img0", tokens[0], g["dino_x_norm_patchtokens_img0"])
    n = g["dino_x_prenorm_img0_first8"].shape[0]
    R = g["dino_x_norm_regtokens"].shape[1]
    assert_close("dino_x_prenorm_img0_first8", hf_out.hidden_states[-1][0, :n], g["dino_x_prenorm_img0_first8"])
    assert_close("dino_x_norm_clstoken", hf_out.last_hidden_state[:, 0], g["dino_x_norm_clstoken"])
    assert_close("dino_x_norm_regtokens", hf_out.last_hidden_state[:, 1 : 1 + R], g["dino_x_norm_regtokens"])


def test_golden_rgb_feat_init(rgb_feat_init, g):
    assert_close("rgb_feat_init", rgb_feat_init, g["rgb_feat_init"])


def test_golden_camera_teacher_forced(model, g):
    cp = model.camera_predictor
    feat_in, pose_in = g["iter_rgb_feat_in"], g["iter_pose_enc_in"]
    iters = feat_in.shape[0]
    with torch.no_grad():
        for i in range(iters):
            feat, pose, ex = cp.refine_step(feat_in[i], g["rgb_feat_init"], pose_in[i])
            assert_close(f"pose_embed it{i}", ex["pose_embed"], g["iter_pose_embed"][i])
            assert_close(f"trunk_in it{i}", ex["trunk_in"], g["iter_trunk_in"][i])
            assert_close(f"trunk_out it{i}", ex["trunk_out"], g["iter_trunk_out"][i])
            assert_close(f"pose_branch_out it{i}", ex["pose_branch_out"], g["iter_pose_branch_out"][i])
            if i + 1 < iters:
                assert_close(f"rgb_feat after it{i}", feat, feat_in[i + 1])
                assert_close(f"pose_enc after it{i}", pose, pose_in[i + 1])
            else:
                assert_close("pred_pose_enc (teacher-forced last)", pose, g["pred_pose_enc"])


def test_golden_camera_iters1(model, g, rgb_feat_init):
    out = model.camera_predictor(None, iters=1, rgb_feat_init=rgb_feat_init)
    assert_close("iters1_pred_pose_enc", out["pred_pose_enc"], g["iters1_pred_pose_enc"])
    assert_close("iters1_R", out["R"], g["iters1_R"])
    assert_close("iters1_T", out["T"], g["iters1_T"])
    assert_close("iters1_focal_length", out["focal_length"], g["iters1_focal_length"])


def test_golden_efp(g):
    key = [k for k in g if k.startswith("EFP_extrinsics_")][0]
    size = int(key.rsplit("_", 1)[1])
    ext, K = cameras_to_pixel(g["pred_R"], g["pred_T"], g["pred_focal_length"], (size, size))
    ref_e, ref_k = g[key], g[f"EFP_intrinsics_{size}"]
    assert_close(key, ext.reshape(ref_e.shape), ref_e)
    assert_close(f"EFP_intrinsics_{size}", K.reshape(ref_k.shape), ref_k)


def test_golden_rank_by_dino(model, tokens):
    from vggsfm_ns.networks.ranking import rank_from_patch_tokens

    ga = golden("camera_avgpose_rank.pt")
    rank = rank_from_patch_tokens(tokens)
    assert rank.tolist() == ga["rank_by_dino"].tolist(), f"rank {rank.tolist()} != golden {ga['rank_by_dino'].tolist()}"


@pytest.mark.slow
def test_golden_rank_by_dino_end_to_end(model, g):
    from vggsfm_ns.networks import rank_frames_by_dino

    ga = golden("camera_avgpose_rank.pt")
    rank = rank_frames_by_dino(g["images"], model.camera_predictor)
    assert rank.tolist() == ga["rank_by_dino"].tolist()


@pytest.mark.slow
def test_golden_resize256_iters1(model, g):
    """Frames of another size are resized to 336 inside the predictor (smooth 1-iteration target)."""
    gt = golden("tracker_*256*.pt")
    out = model.camera_predictor(gt["images"][0], iters=1)
    assert_close("resize256_iters1_pred_pose_enc", out["pred_pose_enc"], g["resize256_iters1_pred_pose_enc"])


def _bitwise_platform(model, g) -> bool:
    with exact_mode(model), torch.no_grad():
        feat, pose, _ = model.camera_predictor.refine_step(g["iter_rgb_feat_in"][1], g["rgb_feat_init"], g["iter_pose_enc_in"][1])
    return torch.equal(feat, g["iter_rgb_feat_in"][2]) and torch.equal(pose, g["iter_pose_enc_in"][2])


def test_golden_camera_full_exact(model, g):
    """4-iteration poses (chaotic, optional): exact mode from the official ``rgb_feat_init``."""
    bitwise = _bitwise_platform(model, g)
    with exact_mode(model):
        out = model.camera_predictor(None, iters=g["iter_pose_enc_in"].shape[0], rgb_feat_init=g["rgb_feat_init"])
    errs = {
        "pred_pose_enc": maxerr(out["pred_pose_enc"], g["pred_pose_enc"]),
        "pred_R": maxerr(out["R"], g["pred_R"]),
        "pred_T": maxerr(out["T"], g["pred_T"]),
        "pred_focal_length": maxerr(out["focal_length"], g["pred_focal_length"]),
    }
    if bitwise:
        bad = {k: v for k, v in errs.items() if v > TOL}
        assert not bad, f"exact mode is bitwise per iteration but the 4-iteration outputs differ: {bad}"
    else:
        assert torch.isfinite(out["pred_pose_enc"]).all()
        R = out["R"].double()
        assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand_as(R), atol=1e-5)


@pytest.mark.slow
def test_golden_avg_pose_exact(model, g):
    """``average_camera_prediction`` over the golden query indices (chaotic, optional): exact mode."""
    from vggsfm_ns.cameras import average_camera_prediction

    ga = golden("camera_avgpose_rank.pt")
    bitwise = _bitwise_platform(model, g)
    with exact_mode(model):
        R, T, f = average_camera_prediction(g["images"], model, ga["avg_query_indices"].tolist())
    errs = {"avg_R": maxerr(R, ga["avg_R"]), "avg_T": maxerr(T, ga["avg_T"]), "avg_focal_length": maxerr(f, ga["avg_focal_length"])}
    assert R.dtype == torch.float64 and R.shape == ga["avg_R"].shape
    if bitwise:
        bad = {k: v for k, v in errs.items() if v > TOL}
        assert not bad, f"exact mode is bitwise per iteration but the averaged cameras differ: {bad}"
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand_as(R), atol=1e-9)


def test_average_and_prior(model, tokens, rgb_feat_init):
    """Averaging over one query (frame 0) reproduces the single run (scipy round trip only), and
    the pixel prior has frame 0 = identity, a pixel-centre principal point and a clamped focal."""
    from vggsfm_ns.cameras import average_camera_prediction, camera_prior_from_normalized
    from vggsfm_ns.conventions import square_pad_transform

    R, T, f = average_camera_prediction(None, model, [0], patch_tokens=tokens, iters=1)
    single = model.camera_predictor(None, iters=1, rgb_feat_init=rgb_feat_init)
    assert maxerr(R, single["R"]) < 1e-5 and maxerr(T, single["T"]) < 1e-5 and maxerr(f, single["focal_length"]) < 1e-6
    assert torch.allclose(R[0], torch.eye(3, dtype=torch.float64), atol=1e-6)

    S = tokens.shape[0]
    transforms = [square_pad_transform(640, 480, 336)] * S
    prior = camera_prior_from_normalized(R, T, f, transforms)
    assert prior.extrinsics.shape == (S, 3, 4) and prior.intrinsics.shape == (S, 3, 3)
    assert prior.extrinsics.dtype == torch.float64 and prior.intrinsics.dtype == torch.float64
    assert torch.allclose(prior.extrinsics[0], torch.eye(3, 4, dtype=torch.float64), atol=1e-5)
    assert torch.equal(prior.intrinsics[:, 0, 2], torch.full((S,), 167.5, dtype=torch.float64))
    assert torch.equal(prior.intrinsics[:, 1, 2], torch.full((S,), 167.5, dtype=torch.float64))
    fpx = prior.intrinsics[:, 0, 0]
    expected = (f[:, 0].double() * 168).clamp(0.2 * 336, 5 * 336)
    assert torch.allclose(fpx, expected, atol=1e-3) and torch.equal(fpx, prior.intrinsics[:, 1, 1])


def test_rotation_averaging_rule():
    """Official rule: arithmetic mean of scipy quaternions (x, y, z, w) without sign alignment, renormalised."""
    import numpy as np
    from scipy.spatial.transform import Rotation

    from vggsfm_ns.cameras import _average_rotations

    q = Rotation.random(6, random_state=1).as_quat().reshape(2, 3, 4)  # Q=2 queries, S=3 frames
    R = Rotation.from_quat(q.reshape(-1, 4)).as_matrix().reshape(2, 3, 3, 3)
    qs = Rotation.from_matrix(R.reshape(-1, 3, 3)).as_quat().reshape(2, 3, 4)
    mean = qs.mean(0)
    expected = Rotation.from_quat(mean / np.linalg.norm(mean, axis=1, keepdims=True)).as_matrix()
    assert np.abs(_average_rotations(R) - expected).max() < 1e-12
    # identical inputs average to themselves
    same = np.stack([R[0], R[0]])
    assert np.abs(_average_rotations(same) - R[0]).max() < 1e-12
