"""Golden tests of the pose encodings (``geometry.pt``: ``poseenc_*`` and ``cam_to_poseenc_*``)."""

from __future__ import annotations

import torch
from _vggsfm_golden import assert_close, golden

from vggsfm_ns.geometry.pose_encoding import camera_to_pose_encoding, matrix_to_quaternion, pose_encoding_to_camera, quaternion_to_matrix


def test_golden_poseenc_oneFL_to_opencv():
    g = golden("geometry.pt")
    R, T, f = pose_encoding_to_camera(g["poseenc_input"], "absT_quaR_OneFL", to_opencv=True)
    assert_close("R", R, g["poseenc_to_cam_opencv_R"])
    assert_close("T", T, g["poseenc_to_cam_opencv_T"])
    assert_close("focal", f, g["poseenc_to_cam_opencv_focal"])
    # frame 0 is the reference camera
    assert torch.allclose(R[0], torch.eye(3), atol=1e-6) and torch.allclose(T[0], torch.zeros(3), atol=1e-6)


def test_golden_poseenc_oneFL_to_pytorch3d():
    g = golden("geometry.pt")
    R, T, f = pose_encoding_to_camera(g["poseenc_input"], "absT_quaR_OneFL", to_opencv=False)
    assert_close("R", R, g["poseenc_to_cam_p3d_R"])
    assert_close("T", T, g["poseenc_to_cam_p3d_T"])
    assert_close("focal", f, g["poseenc_to_cam_p3d_focal"])


def test_golden_cam_to_poseenc():
    g = golden("geometry.pt")
    pe = camera_to_pose_encoding(g["poseenc_to_cam_p3d_R"], g["poseenc_to_cam_p3d_T"], g["poseenc_to_cam_p3d_focal"], "absT_quaR_OneFL")
    assert_close("cam_to_poseenc_from_p3d", pe, g["cam_to_poseenc_from_p3d"])
    q = pe[:, 3:7]
    assert torch.allclose(q.norm(dim=-1), torch.ones(len(q)), atol=1e-6) and bool((q[:, 0] >= 0).all())


def test_golden_poseenc_logFL_to_opencv():
    g = golden("geometry.pt")
    R, T, f = pose_encoding_to_camera(g["poseenc_logFL_input"], "absT_quaR_logFL", to_opencv=True)
    assert_close("R", R, g["poseenc_logFL_to_cam_opencv_R"])
    assert_close("T", T, g["poseenc_logFL_to_cam_opencv_T"])
    assert_close("focal", f, g["poseenc_logFL_to_cam_opencv_focal"])


def test_quaternion_roundtrip():
    q = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[:, :1] < 0, -q, q)
    R = quaternion_to_matrix(q)
    assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(64, 3, 3), atol=1e-12)
    err = (matrix_to_quaternion(R) - q).abs().max().item()
    assert err < 1e-12, f"quaternion round trip error {err}"


def test_bad_pose_encoding_type():
    import pytest

    with pytest.raises(ValueError):
        pose_encoding_to_camera(torch.zeros(2, 8), "absT_quaR_bogus")
    with pytest.raises(ValueError):
        pose_encoding_to_camera(torch.zeros(2, 9), "absT_quaR_OneFL")
