"""``vggsfm_ns.visuals``: reprojection and track videos (decoded back with PyAV) and the error plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthetic_scene_export import make_result, make_scene
from vggsfm_ns.progress import PipelineObserver


def _decode(path: Path):
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        codec = s.codec_context.name
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return codec, frames


class _Count(PipelineObserver):
    def __init__(self):
        self.steps = {}

    def stage_advanced(self, name, advance=1, note=None):
        self.steps[name] = self.steps.get(name, 0) + advance


@pytest.fixture(scope="module")
def scene_result(tmp_path_factory):
    sc = make_scene(tmp_path_factory.mktemp("vis") / "scene", num_frames=7, width=160, height=120, num_points=120, unregistered=(4,), masks=False, depth=False)
    return sc, make_result(sc, track_max_size=100)


def test_write_visuals_videos_and_plot(scene_result, tmp_path):
    from vggsfm_ns.visuals import write_visuals

    sc, res = scene_result
    obs = _Count()
    paths = write_visuals(res, tmp_path, observer=obs)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["visuals/reproj.mp4", "visuals/tracks.mp4", "visuals/errors.png"]
    assert obs.steps == {"visuals: reproj": 7, "visuals: tracks": 7}
    for p in paths[:2]:
        codec, frames = _decode(p)
        assert codec in ("h264", "mpeg4")
        assert len(frames) == 7
        assert all(f.shape == (120, 160, 3) for f in frames)
    with Image.open(paths[2]) as im:
        assert im.size == (1200, 700) and im.format == "PNG"

    # Placement: away from the drawn points and the header band, the video shows the input image.
    _, reproj = _decode(paths[0])
    for i in (0, 4):
        src = np.asarray(Image.open(sc.root / "images" / sc.names[i]), np.float64)
        diff = np.abs(reproj[i].astype(np.float64) - src)
        assert diff[100:, :40].mean() < 4.0  # bottom-left corner: background gradient only
    # Registered frame: markers are drawn on the observations; unregistered frame: nothing drawn.
    src0 = np.asarray(Image.open(sc.root / "images" / sc.names[0]), np.float64)
    src4 = np.asarray(Image.open(sc.root / "images" / sc.names[4]), np.float64)
    box = (slice(30, 95), slice(45, 120))
    assert np.abs(reproj[0][box] - src0[box]).mean() > 3 * np.abs(reproj[4][box] - src4[box]).mean()


def test_video_size_cap_and_even_sides(scene_result, tmp_path):
    from vggsfm_ns.visuals.reproj import write_reproj_video
    from vggsfm_ns.visuals.video import CanvasLayout

    _, res = scene_result
    p = write_reproj_video(res, tmp_path / "r.mp4", max_size=75)
    _, frames = _decode(p)
    # 160x120 scaled by 75/160 -> 75 x 56.25 -> even sides 76 x 58.
    assert len(frames) == 7 and frames[0].shape == (58, 76, 3)

    lay = CanvasLayout.fit(np.array([[640, 480], [480, 640], [101, 33]]), max_size=320)
    # Mixed sizes: the canvas holds the largest width and height; each frame is centred.
    assert lay.size == (320, 320) and lay.scale == pytest.approx(0.5)
    assert lay.content_box(0) == (0, 40, 320, 240) and lay.content_box(1) == (40, 0, 240, 320)
    assert lay.content_box(2) == (135, 152, 50, 16)
    # Pixel-centre canvas coordinates of the original corner-convention image corners.
    np.testing.assert_allclose(lay.to_canvas(1, np.array([[0.0, 0.0], [480.0, 640.0]])), [[39.5, -0.5], [279.5, 319.5]])


def test_video_writer_removes_file_on_error(tmp_path):
    """A finished block leaves a decodable video; a failing one leaves no (truncated) file."""
    from vggsfm_ns.visuals.video import VideoWriter

    frame = np.full((32, 48, 3), 200, np.uint8)
    with VideoWriter(tmp_path / "ok.mp4", (48, 32)) as w:
        for _ in range(3):
            w.write(frame)
    assert len(_decode(tmp_path / "ok.mp4")[1]) == 3
    with pytest.raises(ValueError, match="expected"):
        with VideoWriter(tmp_path / "bad.mp4", (48, 32)) as w:
            w.write(frame)
            w.write(frame[:16])
    assert not (tmp_path / "bad.mp4").exists()


def test_tracks_mapped_back_to_original_pixels(scene_result):
    """Track positions (processed frame, pixel centre) map back onto the true projections
    (original pixels, corner convention)."""
    from synthetic_scene_export import project
    from vggsfm_ns.visuals.tracks import select_tracks, tracks_in_original_pixels

    sc, res = scene_result
    xy = tracks_in_original_pixels(res.tracks)
    for i in range(len(sc.names)):
        gt, _ = project(sc.w2c[i], sc.K[i], sc.dist[i], sc.points)
        np.testing.assert_allclose(xy[i], gt, atol=2e-4)
    assert select_tracks(5, 10).tolist() == [0, 1, 2, 3, 4]
    assert select_tracks(101, 11).tolist() == list(range(0, 101, 10))


def test_reprojection_errors_match_model(tmp_path):
    """``frame_reprojections`` measures the error of a perturbed observation exactly."""
    import pycolmap

    from vggsfm_ns.visuals.reproj import frame_reprojections

    sc = make_scene(tmp_path / "s", num_frames=3, num_points=50, unreliable=(), masks=False, depth=False)
    rec = sc.recon
    img = rec.image(2)
    p = img.points2D[5]
    img.points2D[5].xy = p.xy + np.array([3.0, 4.0])
    obs, proj, err = frame_reprojections(rec, sc.names[1])
    assert err[5] == pytest.approx(5.0, abs=1e-6)
    assert np.delete(err, 5).max() < 1e-6
    assert frame_reprojections(rec, "nope.png") is None
    assert isinstance(rec, pycolmap.Reconstruction)
