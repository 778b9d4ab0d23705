"""Depth files: 16-bit millimetre PNGs read back by nerfstudio's own reader, downscaled copies,
out-of-range accounting, and COLMAP dense-array ``.bin`` files."""

from __future__ import annotations

import numpy as np
import pytest

from _depth_scene import make_depth_scene, project
from vggsfm_ns.depth.export import (
    DEPTH_UNIT_SCALE_FACTOR,
    depth_file_name,
    downscale_nearest,
    read_colmap_depth,
    save_depth_maps,
    write_colmap_depth,
)
from vggsfm_ns.errors import InputError
from vggsfm_ns.types import DepthResult, FrameDepth


def _result(depths, accepted=None, on_disk_dir=None):
    frames = []
    for i, d in enumerate(depths):
        ok = True if accepted is None else accepted[i]
        fd = FrameDepth(i, d if ok else np.zeros_like(d), None, 1.0, 0.0, 1.0, 0.0, ok)
        if on_disk_dir is not None:
            fd.path = on_disk_dir / f"{i}.npy"
            np.save(fd.path, fd.depth)
            fd.depth = None
        frames.append(fd)
    return DepthResult(frames=frames, model_id="test")


def test_png_read_by_nerfstudio_gives_aligned_depth(tmp_path):
    from nerfstudio.data.utils.data_utils import get_depth_image_from_path

    cams, depths, images, frames, sfm = make_depth_scene(n_cams=4, n_points=400)
    res = _result(depths, on_disk_dir=tmp_path)
    stats = {}
    paths = save_depth_maps(res, frames, tmp_path / "out", num_downscales=2, stats=stats)
    assert paths == {i: f"depths/frame_{i:05d}.png" for i in range(4)}
    assert stats["depth_png_pixels_out_of_range"] == 0
    assert stats["depth_png_pixels_written"] == sum(int((d > 0).sum()) for d in depths)
    rec = sfm.reconstruction
    for i, rel in paths.items():
        p = tmp_path / "out" / rel
        got = get_depth_image_from_path(p, 60, 80, DEPTH_UNIT_SCALE_FACTOR).numpy()[..., 0]
        assert got.shape == (60, 80)
        np.testing.assert_allclose(got, depths[i], atol=0.5e-3 + 1e-6)  # millimetre quantisation
        # sparse SfM points observed in this frame: depth at their projection = their z
        img = rec.image(i + 1)
        X = np.array([rec.points3D[p2.point3D_id].xyz for p2 in img.points2D if p2.has_point3D()])
        uv, z = project(cams[i], X)
        pix = np.floor(uv).astype(int)
        err = np.abs(got[pix[:, 1], pix[:, 0]] - z) / z
        assert err.max() < 0.01, (i, err.max())
        if i == 0:  # points were sampled at frame 0's pixel centres: exact up to the quantisation
            assert err.max() < 2e-4
        # downscaled copies: nearest neighbour, floor size, readable at the downscaled camera size
        for k, f in ((1, 2), (2, 4)):
            q = tmp_path / "out" / f"depths_{f}" / f"frame_{i:05d}.png"
            small = get_depth_image_from_path(q, 60 // f, 80 // f, DEPTH_UNIT_SCALE_FACTOR).numpy()[..., 0]
            assert small.shape == (60 // f, 80 // f)
            rows = ((np.arange(60 // f) + 0.5) * f).astype(int)
            cols = ((np.arange(80 // f) + 0.5) * f).astype(int)
            np.testing.assert_allclose(small, got[rows][:, cols], atol=1e-6)
        # COLMAP dense array next to it, float32 scene units
        np.testing.assert_array_equal(read_colmap_depth(tmp_path / "out" / "colmap" / "depths" / f"frame_{i:05d}.bin"), depths[i])


def test_out_of_range_and_rejected_frames(tmp_path):
    import cv2

    from _depth_scene import make_depth_scene

    _, depths, _, frames, _ = make_depth_scene(n_cams=3, n_points=50)
    d0 = depths[0].copy()
    d0[0, 0] = 70.0  # 70000 mm does not fit in 16 bits
    d0[0, 1] = 2e-4  # 0.2 mm rounds to 0
    d0[0, 2] = np.nan
    d0[0, 3] = -1.0
    res = _result([d0, depths[1], depths[2]], accepted=[True, False, True])
    stats = {}
    paths = save_depth_maps(res, frames, tmp_path, stats=stats, colmap_dir=None)
    assert stats["depth_png_pixels_out_of_range"] == 2
    png = cv2.imread(str(tmp_path / paths[0]), cv2.IMREAD_ANYDEPTH)
    assert png.dtype == np.uint16 and png.shape == (60, 80)
    assert (png[0, :4] == 0).all() and png[0, 4] == round(d0[0, 4] * 1000)
    rejected = cv2.imread(str(tmp_path / paths[1]), cv2.IMREAD_ANYDEPTH)
    assert rejected.shape == (60, 80) and (rejected == 0).all()  # every frame gets a file
    assert not (tmp_path / "colmap").exists()
    # the world scale multiplier
    paths = save_depth_maps(_result([depths[0]]), frames, tmp_path / "scaled", scale=0.5)
    png = cv2.imread(str(tmp_path / "scaled" / paths[0]), cv2.IMREAD_ANYDEPTH)
    np.testing.assert_allclose(png * 1e-3, depths[0] * 0.5, atol=0.5e-3 + 1e-6)
    # wrong size
    with pytest.raises(InputError, match="frame_00000.png"):
        save_depth_maps(_result([depths[0][:10]]), frames, tmp_path / "bad")


def test_depth_file_names_and_downscale():
    taken = set()
    assert depth_file_name("a.jpg", taken) == "a.png"
    assert depth_file_name("a.png", taken) == "a.png.png"  # stem clash
    assert depth_file_name("sub/b.JPG", taken) == "sub/b.png"
    img = np.arange(35, dtype=np.uint16).reshape(5, 7)
    np.testing.assert_array_equal(downscale_nearest(img, 2), img[[1, 3]][:, [1, 3, 5]])


def test_colmap_dense_array_layout_and_round_trip(tmp_path):
    a = np.array([[1, 2, 3], [4, 5, 6]], np.float32)  # H=2, W=3
    p = tmp_path / "d.bin"
    write_colmap_depth(p, a)
    raw = p.read_bytes()
    # header "width&height&channels&", then little-endian float32, x fastest (COLMAP Mat layout)
    assert raw == b"3&2&1&" + np.array([1, 2, 3, 4, 5, 6], "<f4").tobytes()
    np.testing.assert_array_equal(read_colmap_depth(p), a)
    rng = np.random.default_rng(0)
    b = rng.random((7, 5, 3)).astype(np.float32)
    write_colmap_depth(p, b)
    raw = p.read_bytes()
    assert raw.startswith(b"5&7&3&")
    body = np.frombuffer(raw[len(b"5&7&3&") :], "<f4")
    np.testing.assert_array_equal(body[:5], b[0, :, 0])  # channel slowest, then rows, x fastest
    np.testing.assert_array_equal(read_colmap_depth(p), b)
    p.write_bytes(b"3&2&1&" + b"\0" * 8)
    with pytest.raises(InputError, match="header says 3x2x1"):
        read_colmap_depth(p)
    p.write_bytes(b"garbage")
    with pytest.raises(InputError, match="not a COLMAP dense array"):
        read_colmap_depth(p)


def test_export_nerfstudio_depth_agrees_with_sparse_points(tmp_path):
    """Through the real exporter: transforms.json + depth PNGs (nerfstudio reader) + the COLMAP
    model. Every SfM point observed in a frame, projected with that frame's ``transform_matrix``
    (OpenGL camera-to-world in the saved world), finds its own z-depth in the frame's depth file."""
    import json

    import pycolmap
    from nerfstudio.data.utils.data_utils import get_depth_image_from_path

    from _depth_scene import AffineInverseDepthModel, SCENE_SCALE, surface_distance
    from vggsfm_ns.config import DepthConfig
    from vggsfm_ns.depth.estimate import estimate_depth
    from vggsfm_ns.depth.seed import dense_seed_points
    from vggsfm_ns.export.nerfstudio import export_nerfstudio
    from vggsfm_ns.io.ply import read_ply
    from vggsfm_ns.types import ReconstructionResult

    cams, depths, images, frames, sfm = make_depth_scene(n_cams=4, n_points=400)
    model = AffineInverseDepthModel(depths, images, [(2.0 + 0.2 * i, 0.05 * i) for i in range(4)])
    depth = estimate_depth(frames, sfm, DepthConfig(dense_depth=True), model=model, work_dir=tmp_path / "work")
    dense = dense_seed_points(frames, sfm, depth, target=2000)
    result = ReconstructionResult(frames=frames, tracks=None, sfm=sfm, depth=depth, dense_points=dense)
    out = export_nerfstudio(result, tmp_path / "scene", num_downscales=1)

    meta = json.loads((out / "transforms.json").read_text())
    factor = meta["vggsfm_depth_unit_scale_factor"]
    A = np.eye(4)
    A[:3] = np.array(meta["applied_transform"])
    rec = pycolmap.Reconstruction(str(out / "colmap" / "sparse" / "0"))
    by_name = {img.name: img for img in rec.images.values()}
    checked = 0
    for fr in meta["frames"]:
        fx, fy, cx, cy, W, H = (fr.get(k, meta.get(k)) for k in ("fl_x", "fl_y", "cx", "cy", "w", "h"))
        assert (out / fr["depth_file_path"]).is_file() and (out / fr["depth_file_path"].replace("depths/", "depths_2/")).is_file()
        D = get_depth_image_from_path(out / fr["depth_file_path"], H, W, factor).numpy()[..., 0]
        img = by_name[fr["file_path"].split("/", 1)[1]]
        X = np.array([rec.points3D[p.point3D_id].xyz for p in img.points2D if p.has_point3D()])
        Xs = X @ A[:3, :3].T + A[:3, 3]  # saved world
        w2c = np.linalg.inv(np.array(fr["transform_matrix"]))
        Xc = Xs @ w2c[:3, :3].T + w2c[:3, 3]  # OpenGL camera: x right, y up, looking down -z
        z = -Xc[:, 2]
        u = fx * Xc[:, 0] / z + cx
        v = fy * -Xc[:, 1] / z + cy
        got = D[np.floor(v).astype(int), np.floor(u).astype(int)]
        err = np.abs(got - z) / z
        # nearest-pixel sampling on slanted surfaces: points off the pixel centre differ slightly
        assert np.median(err) < 1e-3 and np.percentile(err, 99) < 0.01 and err.max() < 0.02, (fr["file_path"], err.max())
        if fr["file_path"].endswith("frame_00000.png"):  # points sampled at this frame's pixel centres
            assert err.max() < 2e-4
        checked += len(z)
    assert checked > 1000
    # the dense seed went into dense_pc.ply in the saved world and lies on the scene's surfaces
    assert meta["ply_file_path"] == "dense_pc.ply"
    xyz, rgb = read_ply(out / "dense_pc.ply")
    assert len(xyz) == len(dense[0]) and 1800 <= len(xyz) <= 2000
    back = (np.asarray(xyz, np.float64) - A[:3, 3]) @ A[:3, :3]  # saved -> SfM world (A is a rotation)
    assert np.median(surface_distance(back)) < 1e-4 * SCENE_SCALE
