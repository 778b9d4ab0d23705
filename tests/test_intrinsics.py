"""Known intrinsics from EXIF, nerfstudio-style JSON and COLMAP cameras files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vggsfm_ns.config import CameraConfig
from vggsfm_ns.errors import InputError
from vggsfm_ns.sfm.intrinsics import known_intrinsics, read_colmap_cameras
from vggsfm_ns.types import FrameSet


def frames(n=3, size=(640, 480), exif=None):
    names = [f"img_{i}.jpg" for i in range(n)]
    return FrameSet(names=names, sizes=np.tile(size, (n, 1)), paths=[None] * n, exif_focal_px=exif or [])


def K(fx, fy, cx, cy):
    return np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])


def test_exif_auto_explicit_and_missing():
    fr = frames(exif=[800.0, 800.0, 810.0])
    k = known_intrinsics(fr, CameraConfig())
    assert k.source == "exif" and not k.fixed and k.extra_params.shape == (3, 0)
    np.testing.assert_allclose(k.intrinsics[2].numpy(), K(810, 810, 320, 240))
    assert known_intrinsics(fr, CameraConfig(intrinsics="predict")) is None
    assert known_intrinsics(frames(exif=[800.0, None, 800.0]), CameraConfig()) is None
    with pytest.raises(InputError, match="no EXIF focal"):
        known_intrinsics(frames(exif=[800.0, None, 800.0]), CameraConfig(intrinsics="exif"))
    k = known_intrinsics(fr, CameraConfig(camera_type="SIMPLE_RADIAL", fix_intrinsics=True))
    assert k.fixed and k.extra_params.shape == (3, 1) and float(k.extra_params.abs().max()) == 0


def test_json_shared_top_level(tmp_path):
    p = tmp_path / "intr.json"
    p.write_text(json.dumps({"fl_x": 500.0, "fl_y": 502.0, "cx": 321.0, "cy": 239.5}))
    k = known_intrinsics(frames(), CameraConfig(intrinsics_file=p))
    assert k.source == "file"
    np.testing.assert_allclose(k.intrinsics.numpy(), np.tile(K(501, 501, 321, 239.5), (3, 1, 1)))
    k = known_intrinsics(frames(), CameraConfig(intrinsics="file", intrinsics_file=p, camera_type="PINHOLE"))
    np.testing.assert_allclose(k.intrinsics[0].numpy(), K(500, 502, 321, 239.5))


def test_json_without_principal_point_uses_the_image_centre(tmp_path):
    """Only a focal length: cx, cy default to the centre (of the stated size, rescaled to the image)."""
    p = tmp_path / "f.json"
    p.write_text(json.dumps({"fl_x": 1000.0}))
    k = known_intrinsics(frames(), CameraConfig(intrinsics_file=p))
    np.testing.assert_allclose(k.intrinsics.numpy(), np.tile(K(1000, 1000, 320, 240), (3, 1, 1)))
    p.write_text(json.dumps({"fl_x": 2000.0, "w": 1280, "h": 960}))  # given for 2x the frames' 640x480
    k = known_intrinsics(frames(), CameraConfig(intrinsics_file=p))
    np.testing.assert_allclose(k.intrinsics.numpy(), np.tile(K(1000, 1000, 320, 240), (3, 1, 1)))
    assert torch.isfinite(k.intrinsics).all()
    # a frame entry that restates the size inherits the focal length, not a centre of the other size
    p.write_text(json.dumps({"fl_x": 2000.0, "w": 1280, "h": 960, "frames": [{"file_path": "images/img_1.jpg", "w": 640, "h": 480}]}))
    k = known_intrinsics(frames(), CameraConfig(intrinsics_file=p))
    np.testing.assert_allclose(k.intrinsics[0].numpy(), K(1000, 1000, 320, 240))
    np.testing.assert_allclose(k.intrinsics[1].numpy(), K(2000, 2000, 320, 240))


def test_json_transforms_per_frame_with_rescale_and_distortion(tmp_path):
    p = tmp_path / "transforms.json"
    meta = {
        "w": 1280, "h": 960, "fl_x": 1000.0, "fl_y": 1000.0, "cx": 640.0, "cy": 480.0,
        "k1": 0.01, "k2": -0.002, "p1": 0.0005, "p2": -0.0003,
        "frames": [
            {"file_path": "images/img_0.jpg"},
            {"file_path": "images/img_1.jpg", "fl_x": 1100.0, "fl_y": 1100.0},
            {"file_path": "images/img_2.jpg", "cx": 650.0},
        ],
    }
    p.write_text(json.dumps(meta))
    k = known_intrinsics(frames(), CameraConfig(intrinsics_file=p, camera_type="OPENCV", fix_intrinsics=True))
    assert k.fixed
    # given for 1280x960, images are 640x480: everything in pixels halves
    np.testing.assert_allclose(k.intrinsics[0].numpy(), K(500, 500, 320, 240))
    np.testing.assert_allclose(k.intrinsics[1].numpy(), K(550, 550, 320, 240))
    np.testing.assert_allclose(k.intrinsics[2].numpy(), K(500, 500, 325, 240))
    np.testing.assert_allclose(k.extra_params.numpy(), np.tile([0.01, -0.002, 0.0005, -0.0003], (3, 1)))
    with pytest.raises(InputError, match="cannot be represented"):
        known_intrinsics(frames(), CameraConfig(intrinsics_file=p, camera_type="SIMPLE_RADIAL"))


def test_json_keyed_by_file_name(tmp_path):
    p = tmp_path / "k.json"
    p.write_text(json.dumps({f"img_{i}.jpg": {"fl_x": 400.0 + i, "cx": 320, "cy": 240} for i in range(3)}))
    k = known_intrinsics(frames(), CameraConfig(intrinsics_file=p))
    np.testing.assert_allclose(k.intrinsics[:, 0, 0].numpy(), [400, 401, 402])


@pytest.mark.parametrize("content,match", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"cx": 3}), "no intrinsics"),
    (json.dumps({"fl_x": "abc", "cx": 1, "cy": 1}), "must be a number"),
    (json.dumps({"fl_x": -5, "cx": 1, "cy": 1}), "positive"),
    (json.dumps({"frames": [{"file_path": "images/img_0.jpg", "fl_x": 500, "cx": 1, "cy": 1}]}), "no intrinsics for 2 frame"),
    (json.dumps({"fl_x": 500, "fl_y": 700, "cx": 1, "cy": 1}), "differ"),
    (json.dumps({"w": 100, "h": 100, "fl_x": 500, "cx": 1, "cy": 1}), "aspect ratio"),
])
def test_json_errors(tmp_path, content, match):
    p = tmp_path / "bad.json"
    p.write_text(content)
    with pytest.raises(InputError, match=match) as e:
        known_intrinsics(frames(), CameraConfig(intrinsics_file=p))
    assert str(p) in str(e.value)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(InputError, match="not found"):
        known_intrinsics(frames(), CameraConfig(intrinsics_file=tmp_path / "nope.json"))
    p = tmp_path / "k.yaml"
    p.write_text("fl_x: 3")
    with pytest.raises(InputError, match="unsupported intrinsics file"):
        known_intrinsics(frames(), CameraConfig(intrinsics_file=p))
    with pytest.raises(InputError, match="needs --intrinsics-file"):
        known_intrinsics(frames(), CameraConfig(intrinsics="file"))


def _colmap_model(path: Path, cams, image_cams):
    import pycolmap

    rec = pycolmap.Reconstruction()
    for cid, (model, w, h, params) in cams.items():
        rec.add_camera_with_trivial_rig(pycolmap.Camera(model=model, width=w, height=h, params=params, camera_id=cid))
    for i, cid in enumerate(image_cams):
        img = pycolmap.Image(name=f"img_{i}.jpg", camera_id=cid, image_id=i + 1)
        rec.add_image_with_trivial_frame(img, pycolmap.Rigid3d())
    path.mkdir(parents=True, exist_ok=True)
    rec.write_binary(str(path))
    rec.write_text(str(path))


def test_colmap_single_camera_bin_and_txt(tmp_path):
    _colmap_model(tmp_path / "m", {1: ("SIMPLE_RADIAL", 1280, 960, [900.0, 640.0, 480.0, 0.02])}, [1, 1, 1])
    for name in ("cameras.bin", "cameras.txt"):
        k = known_intrinsics(frames(), CameraConfig(intrinsics_file=tmp_path / "m" / name, camera_type="SIMPLE_RADIAL"))
        np.testing.assert_allclose(k.intrinsics[1].numpy(), K(450, 450, 320, 240))
        np.testing.assert_allclose(k.extra_params.numpy(), np.full((3, 1), 0.02))
    cams = read_colmap_cameras(tmp_path / "m" / "cameras.bin")
    assert list(cams) == [1]


def test_colmap_several_cameras_need_images(tmp_path):
    cams = {1: ("PINHOLE", 640, 480, [500.0, 510.0, 320.0, 240.0]), 2: ("OPENCV", 640, 480, [600.0, 600.0, 330.0, 250.0, 0.01, 0.0, 0.0, 0.0])}
    _colmap_model(tmp_path / "m", cams, [2, 1, 2])
    for name in ("cameras.bin", "cameras.txt"):
        k = known_intrinsics(frames(), CameraConfig(intrinsics_file=tmp_path / "m" / name, camera_type="OPENCV"))
        np.testing.assert_allclose(k.intrinsics[0].numpy(), K(600, 600, 330, 250))
        np.testing.assert_allclose(k.intrinsics[1].numpy(), K(500, 510, 320, 240))
        np.testing.assert_allclose(k.extra_params[0].numpy(), [0.01, 0, 0, 0])
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "cameras.txt").write_text((tmp_path / "m" / "cameras.txt").read_text())
    with pytest.raises(InputError, match="images.txt"):
        known_intrinsics(frames(), CameraConfig(intrinsics_file=lone / "cameras.txt"))


@pytest.mark.parametrize("text,match", [
    ("1 SIMPLE_PINHOLE 640 480 500 320\n", "needs 3 parameters"),
    ("1 FOOBAR 640 480 500 320 240\n", "unknown COLMAP camera model"),
    ("1 OPENCV_FISHEYE 640 480 500 500 320 240 0 0 0 0\n", "not supported"),
    ("# only a comment\n", "no camera"),
    ("1 SIMPLE_PINHOLE 640\n", "expected"),
])
def test_colmap_txt_errors(tmp_path, text, match):
    p = tmp_path / "cameras.txt"
    p.write_text(text)
    with pytest.raises(InputError, match=match):
        known_intrinsics(frames(), CameraConfig(intrinsics_file=p))


def test_colmap_bin_truncated(tmp_path):
    _colmap_model(tmp_path / "m", {1: ("SIMPLE_PINHOLE", 640, 480, [500.0, 320.0, 240.0])}, [1])
    data = (tmp_path / "m" / "cameras.bin").read_bytes()
    p = tmp_path / "cameras.bin"
    p.write_bytes(data[:-5])
    with pytest.raises(InputError, match="cameras"):
        known_intrinsics(frames(), CameraConfig(intrinsics_file=p))


def test_colmap_images_file_errors_name_the_file(tmp_path):
    """With several cameras the image -> camera map comes from images.txt/.bin: a model with 2D
    points reads back; a malformed one is an InputError naming the file, never a raw traceback."""
    import pycolmap

    cams = {1: ("PINHOLE", 640, 480, [500.0, 510.0, 320.0, 240.0]), 2: ("PINHOLE", 640, 480, [600.0, 600.0, 330.0, 250.0])}
    _colmap_model(tmp_path / "m", cams, [2, 1, 2])
    rec = pycolmap.Reconstruction(str(tmp_path / "m"))
    rec.image(1).points2D = pycolmap.Point2DList([pycolmap.Point2D(np.array([10.0, 20.0])) for _ in range(5)])
    rec.write_binary(str(tmp_path / "m"))
    rec.write_text(str(tmp_path / "m"))
    for name in ("cameras.bin", "cameras.txt"):
        k = known_intrinsics(frames(), CameraConfig(intrinsics_file=tmp_path / "m" / name, camera_type="PINHOLE"))
        np.testing.assert_allclose(k.intrinsics[0].numpy(), K(600, 600, 330, 250))
        np.testing.assert_allclose(k.intrinsics[1].numpy(), K(500, 510, 320, 240))

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cameras.txt").write_text((tmp_path / "m" / "cameras.txt").read_text())
    lines = (tmp_path / "m" / "images.txt").read_text().splitlines()
    first = next(i for i, ln in enumerate(lines) if ln and not ln.startswith("#"))
    parts = lines[first].split()
    parts[8] = "two"
    lines[first] = " ".join(parts)
    (bad / "images.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"images.txt: cannot read COLMAP images file \(ValueError"):
        known_intrinsics(frames(), CameraConfig(intrinsics_file=bad / "cameras.txt"))

    (bad / "images.txt").unlink()
    (bad / "cameras.bin").write_bytes((tmp_path / "m" / "cameras.bin").read_bytes())
    (bad / "images.bin").write_bytes((tmp_path / "m" / "images.bin").read_bytes()[:-30])
    with pytest.raises(InputError, match="images.bin: cannot read COLMAP images file"):
        known_intrinsics(frames(), CameraConfig(intrinsics_file=bad / "cameras.bin"))
    (bad / "images.bin").write_bytes((tmp_path / "m" / "images.bin").read_bytes() + b"xx")
    with pytest.raises(InputError, match="images.bin: malformed COLMAP images.bin"):
        known_intrinsics(frames(), CameraConfig(intrinsics_file=bad / "cameras.bin"))


def test_known_intrinsics_reach_the_back_end_in_processed_pixels():
    """EXIF focal in original pixels -> back end in processed pixels -> result in original pixels."""
    from vggsfm_ns.config import SfMConfig
    from vggsfm_ns.sfm.backend import reconstruct_from_tracks
    from vggsfm_ns.sfm.synthetic import make_scene

    scene = make_scene(num_frames=12, num_points=1000, trajectory="orbit", image_size=(1600, 1200), focal=1500.0,
                       processed="square", processed_size=512, seed=3)
    fr = FrameSet(names=scene.names, sizes=np.tile([1600, 1200], (12, 1)), paths=[None] * 12, exif_focal_px=[1500.0] * 12)
    known = known_intrinsics(fr, CameraConfig(fix_intrinsics=True))
    res = reconstruct_from_tracks(scene.tracks, None, SfMConfig(), CameraConfig(fix_intrinsics=True), known=known)
    torch.testing.assert_close(res.intrinsics, torch.from_numpy(scene.intrinsics))
    assert res.stats["intrinsics_source"] == "exif" and res.stats["mean_reproj_error_px"] < 1.5
