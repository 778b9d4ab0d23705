"""export_nerfstudio on synthetic reconstructions: file layout and contents, poses, intrinsics, ply,
agreement with nerfstudio's own colmap_to_json, masks, depth hook, atomic output."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pycolmap
import pytest
from _scene import make_scene
from PIL import Image

from vggsfm_ns.conventions import opengl_c2w_to_opencv_w2c
from vggsfm_ns.errors import InputError, OutputExistsError, ReconstructionError
from vggsfm_ns.export import APPLIED_TRANSFORM, export_nerfstudio
from vggsfm_ns.io.ply import read_ply
from vggsfm_ns.types import DepthResult, FrameDepth


def _load(out: Path) -> dict:
    return json.loads((out / "transforms.json").read_text())


def _A44() -> np.ndarray:
    return np.vstack([APPLIED_TRANSFORM, [0, 0, 0, 1]])


def test_layout_poses_intrinsics_ply(tmp_path):
    res = make_scene(tmp_path, n_frames=6, unregistered=[2])
    out = export_nerfstudio(res, tmp_path / "scene", num_downscales=2)
    assert out == tmp_path / "scene"
    assert sorted(p.name for p in out.iterdir()) == [
        "colmap", "images", "images_2", "images_4", "sparse_pc.ply", "transforms.json", "vggsfm_report.json",
    ]
    assert {p.name for p in (out / "colmap/sparse/0").iterdir()} >= {"cameras.bin", "images.bin", "points3D.bin"}
    # nothing else was left beside the dataset (temporary folder renamed, not copied)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input", "scene"]
    # every input frame is in images/ with its original bytes (upright 8-bit RGB PNGs)
    for name, src in zip(res.frames.names, res.frames.paths):
        assert (out / "images" / name).read_bytes() == src.read_bytes()
        assert Image.open(out / "images_2" / name).size == (32, 24)
        assert Image.open(out / "images_4" / name).size == (16, 12)

    tf = _load(out)
    assert list(tf)[:11] == ["camera_model", "w", "h", "fl_x", "fl_y", "cx", "cy", "k1", "k2", "p1", "p2"]
    assert {"frames", "applied_transform", "ply_file_path"} <= set(tf)
    assert tf["camera_model"] == "OPENCV" and (tf["w"], tf["h"]) == (64, 48)
    cam = res.sfm.reconstruction.cameras[1]
    assert (tf["fl_x"], tf["fl_y"], tf["cx"], tf["cy"], tf["k1"]) == tuple(float(v) for v in (cam.params[0], cam.params[0], cam.params[1], cam.params[2], cam.params[3]))
    assert tf["k2"] == tf["p1"] == tf["p2"] == 0.0
    assert tf["applied_transform"] == APPLIED_TRANSFORM.tolist()
    assert tf["ply_file_path"] == "sparse_pc.ply"
    assert [f["file_path"] for f in tf["frames"]] == [f"images/img_{i:03d}.png" for i in (0, 1, 3, 4, 5)]
    assert all(f["vggsfm_reliable"] is True for f in tf["frames"])
    assert all("fl_x" not in f and "mask_path" not in f and "depth_file_path" not in f for f in tf["frames"])

    # poses round-trip: undo applied_transform and the OpenGL flip -> COLMAP cam_from_world
    recon = res.sfm.reconstruction
    for f in tf["frames"]:
        img = recon.image(f["colmap_im_id"])
        assert img.name == Path(f["file_path"]).name
        T = np.array(f["transform_matrix"])
        assert T.shape == (4, 4) and np.allclose(T[3], [0, 0, 0, 1])
        w2c = opengl_c2w_to_opencv_w2c(np.linalg.inv(_A44()) @ T)
        assert np.allclose(w2c, img.cam_from_world().matrix(), atol=1e-9)
        # camera centre in the saved world = A @ centre in COLMAP world
        assert np.allclose(T[:3, 3], APPLIED_TRANSFORM[:, :3] @ img.projection_center(), atol=1e-9)

    # ply = model points under applied_transform, same order as sorted point ids
    xyz, rgb = read_ply(out / "sparse_pc.ply")
    ids = sorted(recon.points3D)
    P = np.array([recon.points3D[i].xyz for i in ids])
    assert np.allclose(xyz, P @ APPLIED_TRANSFORM[:, :3].T, atol=1e-6)
    assert np.array_equal(rgb, np.array([recon.points3D[i].color for i in ids]))

    # the COLMAP model round-trips and holds only the registered images
    back = pycolmap.Reconstruction(str(out / "colmap/sparse/0"))
    assert sorted(i.name for i in back.images.values()) == [f"img_{i:03d}.png" for i in (0, 1, 3, 4, 5)]
    assert back.num_points3D() == recon.num_points3D()

    rep = json.loads((out / "vggsfm_report.json").read_text())
    assert rep["version"] == 1
    s = rep["summary"]
    assert (s["frames_in"], s["frames_registered"], s["frames_reliable"], s["points"]) == (6, 5, 5, recon.num_points3D())
    assert s["mean_reproj_error_px"] < 1e-6
    assert s["mean_track_length"] == pytest.approx(recon.compute_mean_track_length())
    assert s["seconds"]["tracks"] == 1.5 and "export images" in s["seconds"]
    assert [r["registered"] for r in rep["frames"]] == [True, True, False, True, True, True]
    assert rep["frames"][2]["image_id"] is None and rep["frames"][0]["num_observations"] > 30
    assert rep["config"]["track"]["max_query_pts"] == 2048 and rep["messages"] == ["synthetic scene"]


def test_same_world_as_nerfstudio_colmap_to_json(tmp_path):
    """Our transforms.json and ply equal what nerfstudio's colmap_to_json writes from the same model."""
    from nerfstudio.process_data.colmap_utils import colmap_to_json

    res = make_scene(tmp_path, n_frames=5)
    out = export_nerfstudio(res, tmp_path / "scene", num_downscales=0)
    ref = tmp_path / "ref"
    ref.mkdir()
    colmap_to_json(out / "colmap/sparse/0", ref)
    ours, theirs = _load(out), _load(ref)
    for k in ["camera_model", "w", "h", "fl_x", "fl_y", "cx", "cy", "k1", "k2", "p1", "p2", "applied_transform", "ply_file_path"]:
        assert ours[k] == theirs[k], k
    by_path = {Path(f["file_path"]).name: f for f in theirs["frames"]}
    assert len(by_path) == len(ours["frames"]) == 5
    for f in ours["frames"]:
        g = by_path[Path(f["file_path"]).name]
        assert f["colmap_im_id"] == g["colmap_im_id"]
        assert np.allclose(f["transform_matrix"], g["transform_matrix"], atol=1e-12)
    import open3d as o3d

    a = np.asarray(o3d.io.read_point_cloud(str(out / "sparse_pc.ply")).points)
    b = np.asarray(o3d.io.read_point_cloud(str(ref / "sparse_pc.ply")).points)
    assert a.shape == b.shape and np.allclose(np.sort(a, 0), np.sort(b, 0), atol=1e-5)


def test_per_frame_cameras_and_mixed_sizes(tmp_path):
    sizes = [(64, 48), (80, 60), (64, 48), (48, 64)]
    res = make_scene(tmp_path, sizes=sizes, camera_model="OPENCV", shared=False)
    out = export_nerfstudio(res, tmp_path / "scene", num_downscales=1)
    tf = _load(out)
    assert tf["camera_model"] == "OPENCV"
    assert not {"fl_x", "fl_y", "cx", "cy", "w", "h", "k1"} & set(tf)
    recon = res.sfm.reconstruction
    for f, (w, h) in zip(tf["frames"], sizes):
        cam = recon.image(f["colmap_im_id"]).camera
        p = cam.params
        assert (f["w"], f["h"]) == (w, h) == (cam.width, cam.height)
        assert [f[k] for k in ("fl_x", "fl_y", "cx", "cy", "k1", "k2", "p1", "p2")] == pytest.approx(list(p))
        assert Image.open(out / "images_2" / Path(f["file_path"]).name).size == (w // 2, h // 2)
    assert len({f["fl_x"] for f in tf["frames"]}) == 4


def test_reencoded_images_exif_and_16bit(tmp_path):
    res = make_scene(tmp_path, n_frames=4, sizes=[(30, 40)] * 4, camera_model="PINHOLE")
    # frame 0: stored 40x30 with EXIF orientation 6 (display 30x40); frame 1: 16-bit grey
    a = np.random.default_rng(3).integers(0, 256, (30, 40, 3), dtype=np.uint8)
    ex = Image.Exif()
    ex[0x0112] = 6
    Image.fromarray(a).save(res.frames.paths[0], exif=ex)
    g16 = (np.arange(1200, dtype=np.uint32).reshape(40, 30) * 50).astype(np.uint16)
    Image.fromarray(g16).save(res.frames.paths[1])
    out = export_nerfstudio(res, tmp_path / "scene", num_downscales=1)
    im0 = Image.open(out / "images" / res.frames.names[0])
    assert im0.size == (30, 40) and im0.mode == "RGB" and im0.getexif().get(0x0112) in (None, 1)
    assert np.array_equal(np.asarray(im0), np.rot90(a, -1))  # PNG: lossless, upright
    im1 = Image.open(out / "images" / res.frames.names[1])
    assert im1.mode == "RGB"
    expect = np.clip(g16 / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(np.asarray(im1)[..., 0], expect)
    assert (out / "images" / res.frames.names[2]).read_bytes() == res.frames.paths[2].read_bytes()


def test_masks_black_means_ignore(tmp_path):
    res = make_scene(tmp_path, n_frames=4, unregistered=[3])
    mdir = tmp_path / "masks_in"
    mdir.mkdir()
    m = np.zeros((48, 64), np.uint8)
    m[8:24, 16:40] = 1  # 1 = dynamic (VGGSfM convention)
    for i, n in enumerate(res.frames.names[:3]):
        if i == 1:
            continue  # frame 1 has no mask file: all kept
        Image.fromarray(m).save(mdir / n)
        res.frames.mask_paths[i] = mdir / n
    out = export_nerfstudio(res, tmp_path / "scene", num_downscales=2)
    tf = _load(out)
    assert [f["mask_path"] for f in tf["frames"]] == ["masks/img_000.png", "masks/img_001.png", "masks/img_002.png"]
    k0 = np.asarray(Image.open(out / "masks/img_000.png"))
    assert k0.dtype == np.uint8 and k0.shape == (48, 64)
    assert np.array_equal(k0, np.where(m > 0, 0, 255))
    assert np.asarray(Image.open(out / "masks/img_001.png")).min() == 255
    k2 = np.asarray(Image.open(out / "masks_2/img_000.png"))
    assert k2.shape == (24, 32) and set(np.unique(k2)) == {0, 255}
    assert np.array_equal(k2, k0[::2, ::2])
    assert Image.open(out / "masks_4/img_003.png").size == (16, 12)  # unregistered frames too


def _fake_depth_module(monkeypatch, calls):
    def save_depth_maps(depth, frames, output_dir, num_downscales):
        calls.append((Path(output_dir), num_downscales))
        out = {}
        (Path(output_dir) / "depths").mkdir()
        for fd in depth.frames:
            stem = Path(frames.names[fd.frame]).stem
            Image.fromarray((fd.depth * 1000).astype(np.uint16)).save(Path(output_dir) / "depths" / f"{stem}.png")
            out[fd.frame] = f"depths/{stem}.png"
        return out

    mod = types.ModuleType("vggsfm_ns.depth.export")
    mod.save_depth_maps = save_depth_maps
    try:
        import vggsfm_ns.depth  # noqa: F401
    except ImportError:
        pkg = types.ModuleType("vggsfm_ns.depth")
        pkg.__path__ = []
        monkeypatch.setitem(sys.modules, "vggsfm_ns.depth", pkg)
    monkeypatch.setitem(sys.modules, "vggsfm_ns.depth.export", mod)


def test_depth_and_dense_points(tmp_path, monkeypatch):
    calls = []
    _fake_depth_module(monkeypatch, calls)
    res = make_scene(tmp_path, n_frames=4)
    res.depth = DepthResult(
        frames=[FrameDepth(i, np.full((48, 64), 2.5, np.float32), None, 1.0, 0.0, 1.0, 0.01, True) for i in range(4)],
        model_id="fake",
    )
    rng = np.random.default_rng(0)
    dense = (rng.normal(size=(500, 3)), rng.integers(0, 256, (500, 3), dtype=np.uint8))
    res.dense_points = dense
    out = export_nerfstudio(res, tmp_path / "scene", num_downscales=1)
    assert len(calls) == 1 and calls[0][1] == 1 and calls[0][0].name.startswith(".scene.tmp-")
    tf = _load(out)
    assert [f["depth_file_path"] for f in tf["frames"]] == [f"depths/img_{i:03d}.png" for i in range(4)]
    assert tf["vggsfm_depth_unit_scale_factor"] == 1e-3
    assert np.asarray(Image.open(out / "depths/img_000.png")).max() == 2500
    assert tf["ply_file_path"] == "dense_pc.ply"
    xyz, rgb = read_ply(out / "dense_pc.ply")
    assert np.allclose(xyz, dense[0] @ APPLIED_TRANSFORM[:, :3].T, atol=1e-5) and np.array_equal(rgb, dense[1])
    assert (out / "sparse_pc.ply").is_file()
    assert json.loads((out / "vggsfm_report.json").read_text())["summary"]["dense_points"] == 500


def test_depth_missing_for_a_frame_is_dropped_consistently(tmp_path, monkeypatch):
    calls = []
    _fake_depth_module(monkeypatch, calls)
    res = make_scene(tmp_path, n_frames=4)
    res.depth = DepthResult(frames=[FrameDepth(i, np.ones((48, 64), np.float32), None, 1, 0, 1, 0, True) for i in range(3)], model_id="fake")
    out = export_nerfstudio(res, tmp_path / "scene", num_downscales=0)
    tf = _load(out)
    assert all("depth_file_path" not in f for f in tf["frames"]) and "vggsfm_depth_unit_scale_factor" not in tf
    assert any("depth maps missing" in m for m in res.messages)


def test_existing_dataset_and_failures_leave_no_partial_output(tmp_path, monkeypatch):
    res = make_scene(tmp_path, n_frames=4)
    out = export_nerfstudio(res, tmp_path / "scene", num_downscales=0)
    before = (out / "transforms.json").read_bytes()
    with pytest.raises(OutputExistsError, match="already holds a dataset; pass --overwrite"):
        export_nerfstudio(res, out, num_downscales=0)
    assert (out / "transforms.json").read_bytes() == before

    import vggsfm_ns.export.nerfstudio as ex

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(ex, "write_ply", boom)
    with pytest.raises(KeyboardInterrupt):
        export_nerfstudio(res, out, num_downscales=0, overwrite=True)
    assert (out / "transforms.json").read_bytes() == before  # old dataset untouched
    with pytest.raises(KeyboardInterrupt):
        export_nerfstudio(res, tmp_path / "new" / "scene", num_downscales=0)
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input", "scene"]
    monkeypatch.undo()

    export_nerfstudio(res, out, num_downscales=1, overwrite=True)
    assert (out / "images_2").is_dir()
    assert all(p.is_file() for p in res.frames.paths)  # input untouched

    # the input folder inside the output folder is refused even with overwrite
    res2 = make_scene(out, n_frames=3)
    with pytest.raises(InputError, match="replacing it would delete the input"):
        export_nerfstudio(res2, out, overwrite=True)


def test_nothing_registered(tmp_path):
    res = make_scene(tmp_path, n_frames=3, unregistered=[0, 1, 2])
    with pytest.raises(ReconstructionError, match="no frame was registered"):
        export_nerfstudio(res, tmp_path / "scene")
    assert not (tmp_path / "scene").exists()


def test_summary_total_is_the_sum_of_the_stages(tmp_path):
    """reconstruct()'s own ``timings["total"]`` is not a stage: the summary's total adds the stages
    (export included) once."""
    import io

    from rich.console import Console

    from vggsfm_ns.report import print_summary

    res = make_scene(tmp_path, n_frames=6)
    res.timings = {"frames": 1.0, "tracks": 2.0, "triangulate + BA": 3.0, "total": 5.5, "export": 0.5}
    buf = io.StringIO()
    print_summary(res, console=Console(file=buf, width=120, color_system=None))
    rows = [line.strip("│┃ ").split("│") for line in buf.getvalue().splitlines() if "│" in line]
    cells = {r[0].strip(): r[1].strip() for r in rows if len(r) >= 2}
    assert cells["total"] == "6.5 s"
    assert cells["export"] == "0.5 s" and cells["tracks"] == "2.0 s"
    from vggsfm_ns.report import build_report

    # the JSON report agrees with the table
    assert build_report(res)["summary"]["seconds"] == {"frames": 1.0, "tracks": 2.0, "triangulate + BA": 3.0, "export": 0.5, "total": 6.5}


def test_summary_warns_when_most_frames_are_unreliable(tmp_path):
    import io

    from rich.console import Console

    from vggsfm_ns.report import build_report, print_summary

    res = make_scene(tmp_path, n_frames=6)
    rep = build_report(res)
    outs = []
    for reliable in (rep["summary"]["frames_registered"], 0):
        rep["summary"]["frames_reliable"] = reliable
        buf = io.StringIO()
        print_summary(res, console=Console(file=buf, width=200, color_system=None), report=rep)
        outs.append(buf.getvalue())
    n = rep["summary"]["frames_registered"]
    assert n > 0 and "Warning: only" not in outs[0]
    assert f"Warning: only 0 of the {n} registered frames are reliable" in outs[1]
