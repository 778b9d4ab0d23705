"""The viser viewer: live observer, scene logic, offline dataset view, and a real browser screenshot.

The screenshot test starts the server on a free localhost port, feeds it a snapshot of magenta
points, opens the page in headless Chromium and counts magenta pixels in the screenshot.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthetic_scene_export import APPLIED, make_scene, project
from vggsfm_ns.errors import InputError
from vggsfm_ns.progress import ReconstructionSnapshot, snapshot_from_reconstruction

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _messages(server, cls_name: str):
    """The server's current scene/GUI state: messages kept in viser's broadcast buffer (the state a
    newly connecting browser receives), filtered by message class name."""
    buf = server._websock_server._broadcast_buffer.message_from_id
    return [m for m in list(buf.values()) if type(m).__name__ == cls_name]


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture
def viewer():
    from vggsfm_ns.viewer import start_live_viewer

    port = _free_port()
    v = start_live_viewer(port=port, verbose=False)
    yield v
    v.stop()
    deadline = time.time() + 10  # viser closes its listening socket asynchronously
    while _port_open(v.server.get_port()) and time.time() < deadline:
        time.sleep(0.1)
    assert not _port_open(v.server.get_port())


def _screenshot(url: str, out: Path, user_dir: Path, size=(1000, 700), budget_ms: int = 6000) -> np.ndarray:
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={user_dir}",
        f"--window-size={size[0]},{size[1]}",
        f"--virtual-time-budget={budget_ms}",
        f"--screenshot={out}",
        url,
    ]
    subprocess.run(cmd, capture_output=True, timeout=60)
    return np.asarray(Image.open(out).convert("RGB"))


def _magenta(img: np.ndarray) -> np.ndarray:
    r, g, b = (img[..., k].astype(int) for k in range(3))
    return (r > 190) & (b > 190) & (g < 90)


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium not installed")
def test_live_viewer_in_headless_chromium(viewer, tmp_path):
    """Magenta points, large point size, camera looking at them: the browser shows them; the server
    holds one frustum per registered frame and the point cloud."""
    sc = make_scene(tmp_path / "s", num_frames=6, num_points=300, point_color=(255, 0, 255), masks=False, depth=False)
    snap = snapshot_from_reconstruction(sc.recon, sc.names, "initial BA", progress=(1, 3))
    viewer.stage_started("triangulate + BA", 4)
    viewer.stage_advanced("triangulate + BA", 2, note="BA")
    viewer.message("a warning", "warning")
    viewer.reconstruction_updated(snap)
    viewer.scene.apply_settings(point_size=1.5)
    up = -np.asarray(sc.w2c)[:, 1, :3].mean(0)
    viewer.scene.set_view(position=3.2 * up / np.linalg.norm(up), look_at=(0.0, 0.0, 0.0))

    frustums = _messages(viewer.server, "CameraFrustumMessage")
    assert sorted(m.name for m in frustums) == [f"/vggsfm/frames/{i:06d}" for i in range(6)]
    assert all(m.image_binary is None for m in frustums)  # no thumbnails were configured
    (pc,) = [m for m in _messages(viewer.server, "PointCloudMessage") if m.name == "/vggsfm/points"]
    assert pc.points.shape == (300, 3) and (pc.colors == [255, 0, 255]).all()
    assert "window 1 / 3" in viewer.scene.gui_status.content and "6 / 6 frames registered" in viewer.scene.gui_status.content
    assert viewer.scene.gui_stage.content.startswith("**triangulate + BA** 2 / 4")

    best = 0
    for attempt in range(3):  # the first page load may land before WebGL is ready on a busy machine
        img = _screenshot(viewer.url, tmp_path / f"shot{attempt}.png", tmp_path / f"chrome{attempt}", budget_ms=6000 + 4000 * attempt)
        best = int(_magenta(img).sum())
        if best > 3000:
            break
    assert img.shape == (700, 1000, 3)
    assert best > 3000, f"only {best} magenta pixels in the screenshot"
    # The points are in the middle of the view (left of the GUI panel), not scattered.
    ys, xs = np.nonzero(_magenta(img))
    assert 200 < np.median(xs) < 700 and 150 < np.median(ys) < 550


def _synthetic_snapshot(S=4, P=200, seed=1):
    rng = np.random.default_rng(seed)
    sc_pts = rng.uniform(-1, 1, (P, 3))
    ext = np.zeros((S, 3, 4))
    for i in range(S):
        a = 2 * np.pi * i / S
        R = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])  # looks at the origin
        C = np.array([4 * np.sin(a), 0.0, -4 * np.cos(a)])
        ext[i] = np.concatenate([R, (-R @ C)[:, None]], 1)
    K = np.tile(np.array([[100.0, 0, 80], [0, 110.0, 60], [0, 0, 1]]), (S, 1, 1))
    return ReconstructionSnapshot(
        label="window 2/5",
        names=[f"f{i}.png" for i in range(S)],
        extrinsics=ext,
        intrinsics=K,
        image_sizes=np.tile([160, 120], (S, 1)),
        registered=np.array([True, True, True, False][:S]),
        points=sc_pts,
        colors=np.full((P, 3), 200, np.uint8),
        point_errors=np.linspace(0.0, 8.0, P),
        frame_errors=np.array([0.5, 3.5, 0.7, np.nan][:S]),
        frame_observations=np.array([100, 100, 10, 0][:S]),
        progress=(2, 5),
    )


def test_scene_controls_and_conventions(viewer):
    """Error filter, colour modes, unreliable highlighting, show/hide, frustum pose convention."""
    from vggsfm_ns.viewer.scene import RELIABLE_COLOR, UNRELIABLE_COLOR
    from vggsfm_ns.visuals.draw import colormap

    snap = _synthetic_snapshot()
    sc = viewer.scene
    sc.update(snap)
    # Unreliable: frame 1 (3.5 px) and frame 2 (10 observations); frame 3 is not registered.
    assert sc.reliable.tolist() == [True, False, False, False]
    fr = {m.name: m for m in _messages(viewer.server, "CameraFrustumMessage")}
    assert sorted(fr) == ["/vggsfm/frames/000000", "/vggsfm/frames/000001", "/vggsfm/frames/000002"]
    enc = lambda c: c[0] * 65536 + c[1] * 256 + c[2]  # noqa: E731
    assert [fr[f"/vggsfm/frames/{i:06d}"].color for i in range(3)] == [enc(RELIABLE_COLOR), enc(UNRELIABLE_COLOR), enc(UNRELIABLE_COLOR)]
    m0 = fr["/vggsfm/frames/000000"]
    assert m0.fov == pytest.approx(2 * np.arctan(60 / 110.0)) and m0.aspect == pytest.approx(160 / 120)
    assert "unreliable (2):** f1.png, f2.png" in sc.gui_frames.content and "not registered (1):** f3.png" in sc.gui_frames.content

    # Frustum pose = camera-to-world in OpenCV axes: projecting a point through the frustum's frame
    # with K gives the same pixel as the snapshot camera.
    import viser.transforms as vtf

    pos = {m.name: np.array(m.position) for m in _messages(viewer.server, "SetPositionMessage")}
    rot = {m.name: vtf.SO3(np.array(m.wxyz)).as_matrix() for m in _messages(viewer.server, "SetOrientationMessage")}
    X = snap.points[:20]
    for i in range(3):
        name = f"/vggsfm/frames/{i:06d}"
        cam = (X - pos[name]) @ rot[name]  # R_wc^T (X - C)
        K = snap.intrinsics[i]
        uv_f = (cam @ K.T)[:, :2] / (cam @ K.T)[:, 2:]
        Xc = X @ snap.extrinsics[i][:, :3].T + snap.extrinsics[i][:, 3]
        uv_s = (Xc @ K.T)[:, :2] / (Xc @ K.T)[:, 2:]
        np.testing.assert_allclose(uv_f, uv_s, atol=1e-6)
        assert (cam[:, 2] > 0).all()  # +z forward: the points are in front of every frustum

    def cloud():
        (m,) = [m for m in _messages(viewer.server, "PointCloudMessage") if m.name == "/vggsfm/points"]
        return m

    assert cloud().points.shape == (200, 3) and (cloud().colors == 200).all()
    sc.apply_settings(max_error_px=2.0)
    assert cloud().points.shape[0] == int((snap.point_errors <= 2.0).sum()) == 50
    sc.apply_settings(max_error_px=None, color_mode="error")
    np.testing.assert_array_equal(cloud().colors, colormap(snap.point_errors, 0.0, 4.0))
    assert tuple(cloud().colors[0]) != tuple(cloud().colors[-1])
    size_before = cloud().point_size
    sc.apply_settings(point_size=2.0)
    assert cloud().point_size == pytest.approx(size_before * 5.0)

    sc.apply_settings(show_frames=False)
    vis = {m.name: m.visible for m in _messages(viewer.server, "SetSceneNodeVisibilityMessage")}
    assert all(vis[f"/vggsfm/frames/{i:06d}"] is False for i in range(3))
    # The GUI widgets follow, and a GUI change drives the scene the same way.
    assert viewer.scene.gui_show_frames.value is False and viewer.scene.gui_color_mode.value == "error"
    sc.gui_max_error.value = 4.0  # as if the user moved the slider (callback runs in viser's pool)
    n_expected = int((snap.point_errors <= 4.0).sum())
    deadline = time.time() + 5
    while cloud().points.shape[0] != n_expected and time.time() < deadline:
        time.sleep(0.02)
    assert cloud().points.shape[0] == n_expected == 100 and sc.settings.max_error_px == 4.0

    # Registration changes: frame 3 gets a pose, frame 0 loses it.
    snap2 = _synthetic_snapshot()
    snap2.registered = np.array([False, True, True, True])
    snap2.frame_errors = np.array([np.nan, 0.4, 0.4, 0.4])
    snap2.frame_observations = np.array([0, 50, 50, 50])
    sc.update(snap2)
    assert sc.frame_names_drawn() == ["f1.png", "f2.png", "f3.png"]
    assert "/vggsfm/frames/000000" in {m.name for m in _messages(viewer.server, "RemoveSceneNodeMessage")}

    with pytest.raises(ValueError):
        sc.apply_settings(color_mode="depth")


def test_live_viewer_observer_protocol(viewer, tmp_path):
    """Stage progress, messages, close; thumbnails from a FrameSet matched by frame name."""
    from synthetic_scene_export import make_result

    sc = make_scene(tmp_path / "s", num_frames=4, num_points=60, unreliable=(), masks=False, depth=False)
    frames = make_result(sc).frames
    snap = snapshot_from_reconstruction(sc.recon, sc.names, "BA")
    viewer.reconstruction_updated(snap)
    assert all(m.image_binary is None for m in _messages(viewer.server, "CameraFrustumMessage"))
    viewer.set_frames(frames.subset([3, 2, 1, 0]))  # later, in another order: matched by name
    fr = sorted(_messages(viewer.server, "CameraFrustumMessage"), key=lambda m: m.name)
    assert len(fr) == 4 and all(m.image_media_type == "image/jpeg" for m in fr)
    import io

    thumb = np.asarray(Image.open(io.BytesIO(fr[2].image_binary)).convert("RGB"), np.float64)
    src = np.asarray(Image.open(sc.root / "images" / sc.names[2]), np.float64)
    assert thumb.shape == src.shape and np.abs(thumb - src).mean() < 6.0  # JPEG of frame 2 itself

    viewer.stage_started("tracks", 10)
    for _ in range(10):
        viewer.stage_advanced("tracks", 1)
    assert viewer.scene.gui_stage.content == "**tracks** 10 / 10"
    viewer.stage_finished("tracks", 2.5)
    assert viewer.scene.gui_stage.content == "tracks: done in 2.5 s"
    for k in range(10):
        viewer.message(f"m{k}", "warning" if k == 9 else "info")
    lines = viewer.scene.gui_messages.content.splitlines()
    assert len(lines) == 8 and lines[-1] == "- ⚠ m9" and lines[0] == "- m2"
    viewer.close()
    assert "finished" in viewer.scene.gui_stage.content
    assert viewer.url == f"http://127.0.0.1:{viewer.server.get_port()}"


def test_view_dataset_folder(tmp_path):
    """The finished-folder view: COLMAP model mapped into the transforms.json world, flags from the
    report, thumbnails, the dense cloud; then a plain transforms.json folder without COLMAP."""
    from vggsfm_ns.geometry.camera import camera_centers
    from vggsfm_ns.viewer import load_dataset, view_dataset

    sc = make_scene(tmp_path / "scene", num_frames=6, num_points=150, unregistered=(4,), unreliable=(2,), masks=False, depth=False)
    shutil.copy(sc.root / "sparse_pc.ply", sc.root / "dense_pc.ply")
    C_gt = camera_centers(sc.w2c) @ APPLIED[:, :3].T + APPLIED[:, 3]
    reg = sc.registered

    v = view_dataset(sc.root, port=_free_port(), block=False, verbose=False)
    try:
        snap = v.scene.snapshot
        assert snap.names == sc.names and snap.registered.tolist() == reg.tolist()
        np.testing.assert_allclose(camera_centers(snap.extrinsics)[reg], C_gt[reg], atol=1e-9)
        ply_pts = sc.points[sc.in_model] @ APPLIED[:, :3].T + APPLIED[:, 3]
        np.testing.assert_allclose(np.sort(snap.points, 0), np.sort(ply_pts, 0), atol=1e-9)
        assert np.isfinite(snap.point_errors).all() and snap.point_errors.max() < 1e-6
        assert v.scene.reliable.tolist() == [True, True, False, True, False, True]
        fr = _messages(v.server, "CameraFrustumMessage")
        assert len(fr) == 5 and all(m.image_media_type == "image/jpeg" and len(m.image_binary) > 100 for m in fr)
        names = {m.name for m in _messages(v.server, "PointCloudMessage")}
        assert names == {"/vggsfm/points", "/vggsfm/dense points"}
        assert "report: 5/6 frames registered" in v.scene.gui_messages.content
        # Projections through the shown cameras land on the recorded observations.
        for i in np.nonzero(reg)[0]:
            xy, _ = project(snap.extrinsics[i], snap.intrinsics[i], np.zeros(4), ply_pts[:5])
            gt, _ = project(sc.w2c[i], sc.K[i], np.zeros(4), sc.points[sc.in_model][:5])
            np.testing.assert_allclose(xy, gt, atol=1e-6)
    finally:
        v.stop()

    shutil.rmtree(sc.root / "colmap")
    data = load_dataset(sc.root / "transforms.json")
    np.testing.assert_allclose(camera_centers(data.snapshot.extrinsics)[reg], C_gt[reg], atol=1e-6)
    np.testing.assert_allclose(data.snapshot.intrinsics[reg], sc.K[reg], atol=1e-9)
    assert data.reliable.tolist() == [True, True, False, True, False, True]
    assert np.isnan(data.snapshot.point_errors).all() and len(data.snapshot.points) == len(sc.in_model)
    assert data.snapshot.frame_errors[2] == pytest.approx(3.5)

    with pytest.raises(InputError, match="no transforms.json"):
        load_dataset(tmp_path)


def test_view_dataset_without_nerfstudio(tmp_path):
    """``vggsfm-ns view`` needs only the core install: with nerfstudio not importable, a folder
    without a COLMAP model (points from sparse_pc.ply) and with a dense cloud still loads."""
    import sys

    sc = make_scene(tmp_path / "scene", num_frames=4, num_points=60, masks=False, depth=False)
    shutil.copy(sc.root / "sparse_pc.ply", sc.root / "dense_pc.ply")
    shutil.rmtree(sc.root / "colmap")
    code = (
        "import sys; sys.modules['nerfstudio'] = None\n"  # any `import nerfstudio...` now fails
        "from vggsfm_ns.viewer import load_dataset\n"
        f"d = load_dataset({str(sc.root)!r})\n"
        "assert 'nerfstudio' not in [m.split('.')[0] for m in sys.modules if sys.modules[m] is not None]\n"
        "print(len(d.snapshot.points), len(d.extra_points['dense points'][0]), int(d.snapshot.registered.sum()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    n = int(sc.in_model.sum()) if sc.in_model.dtype == bool else len(sc.in_model)
    assert out.stdout.split() == [str(n), str(n), str(int(sc.registered.sum()))]
