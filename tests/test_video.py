"""Video decoding: frame count, sharpest frame per interval, sizes, rotation metadata, bad videos.

Videos are encoded in the test with PyAV (libx264, lossless luma so the chosen frames can be
identified by comparison with the originals).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import av
import cv2
import numpy as np
import pytest

from vggsfm_ns.errors import InputError
from vggsfm_ns.io.frames import load_frames
from vggsfm_ns.io.video import extract_frames, interval_of, probe_video, sharpness

SHARP = (3, 10, 17, 28, 39)  # one sharp frame in each of the 5 intervals of 40 frames


def _encode(path: Path, frames: Sequence[np.ndarray], rotation: Optional[int] = None, rate: int = 25, **container_opts) -> Path:
    h, w = frames[0].shape[:2]
    c = av.open(str(path), "w", options=container_opts or None)
    s = c.add_stream("libx264", rate=rate, options={"crf": "0"})
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    if rotation is not None:
        if not hasattr(s, "set_display_rotation"):
            pytest.skip("this PyAV cannot write display-rotation metadata")
        s.set_display_rotation(rotation)
    for f in frames:
        rgb = f if f.ndim == 3 else np.repeat(f[..., None], 3, 2)
        for p in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return path


def _blurry_video(path: Path, n: int = 40, sharp: Sequence[int] = SHARP) -> List[np.ndarray]:
    """A texture panning 1 px per frame; every frame but ``sharp`` is Gaussian-blurred (sigma 2)."""
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 256, (96, 128 + n), dtype=np.uint8).astype(np.float32), (0, 0), 0.7)
    frames = []
    for i in range(n):
        g = base[:, i : i + 128].copy()
        if i not in sharp:
            g = cv2.GaussianBlur(g, (0, 0), 2.0)
        frames.append(np.clip(g, 0, 255).astype(np.uint8))
    _encode(path, frames)
    return frames


def _closest(png: Path, originals: Sequence[np.ndarray]) -> int:
    g = cv2.imread(str(png), cv2.IMREAD_GRAYSCALE).astype(np.float64)
    return int(np.argmin([np.abs(g - o).mean() for o in originals]))


def test_sharpest_frame_per_interval(tmp_path):
    originals = _blurry_video(tmp_path / "v.mp4")
    fs = extract_frames(tmp_path / "v.mp4", tmp_path / "frames", num_frames_target=5)
    assert len(fs) == 5
    assert fs.names == [f"frame_{i:05d}.png" for i in range(1, 6)]
    assert all(p.is_file() and p.parent == tmp_path / "frames" for p in fs.paths)
    assert fs.sizes.tolist() == [[128, 96]] * 5
    assert fs.ordered and fs.source == tmp_path / "v.mp4"
    assert [_closest(p, originals) for p in fs.paths] == list(SHARP)
    # the blur measure itself
    assert sharpness(originals[3]) > 3 * sharpness(originals[4])


def test_frame_count_equals_target_and_short_videos(tmp_path):
    originals = _blurry_video(tmp_path / "v.mp4")
    fs = extract_frames(tmp_path / "v.mp4", tmp_path / "f13", num_frames_target=13)
    assert len(fs) == 13
    chosen = [_closest(p, originals) for p in fs.paths]
    assert chosen == sorted(chosen) and len(set(chosen)) == 13  # temporal order, one per interval
    for k, i in enumerate(chosen):
        assert interval_of(i, 40, 13) == k
    fs_all = extract_frames(tmp_path / "v.mp4", tmp_path / "fall", num_frames_target=300)
    assert len(fs_all) == 40
    assert [_closest(p, originals) for p in fs_all.paths[:6]] == [0, 1, 2, 3, 4, 5]
    assert len(extract_frames(tmp_path / "v.mp4", tmp_path / "f0", num_frames_target=0)) == 40
    info = probe_video(tmp_path / "v.mp4")
    assert (info.num_frames, info.fps, info.size, info.rotation) == (40, 25.0, (128, 96), 0)


@pytest.mark.parametrize("rotation, k", [(90, 1), (-90, 3), (180, 2)])
def test_rotation_metadata(tmp_path, rotation, k):
    frames = []
    for i in range(4):
        a = np.full((48, 64, 3), 40, np.uint8)
        a[:12, :16] = 255  # marker at the stored top-left corner
        frames.append(a)
    _encode(tmp_path / "r.mp4", frames, rotation=rotation)
    fs = extract_frames(tmp_path / "r.mp4", tmp_path / "out", num_frames_target=4)
    expect = np.rot90(frames[0], k)  # display rotation is counter-clockwise
    assert fs.sizes[0].tolist() == [expect.shape[1], expect.shape[0]]
    img = fs.image(0)
    assert img.shape == expect.shape
    assert np.abs(img.astype(int) - expect.astype(int)).mean() < 3.0
    assert probe_video(tmp_path / "r.mp4").rotation == 90 * k


def test_video_through_load_frames(tmp_path):
    _blurry_video(tmp_path / "v.mp4")
    fs = load_frames(tmp_path / "v.mp4", num_frames_target=8, work_dir=tmp_path / "work")
    assert len(fs) == 8 and fs.paths[0] == tmp_path / "work" / "frames" / "frame_00001.png"
    _encode(tmp_path / "two.mp4", [np.zeros((32, 32, 3), np.uint8)] * 2)
    with pytest.raises(InputError, match=r"two\.mp4: only 2 frame\(s\)"):
        load_frames(tmp_path / "two.mp4", work_dir=tmp_path / "w2")


def test_bad_videos(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"not a video " * 100)
    with pytest.raises(InputError, match=r"junk\.mp4: cannot open video"):
        extract_frames(junk, tmp_path / "o1", 5)
    # a valid container whose frame data is zeroed: no frame decodes
    _encode(tmp_path / "ok.mp4", [np.full((48, 64, 3), 20 * i, np.uint8) for i in range(10)], movflags="faststart")
    raw = bytearray((tmp_path / "ok.mp4").read_bytes())
    i = raw.find(b"mdat")
    raw[i + 4 :] = bytes(len(raw) - i - 4)
    (tmp_path / "zeroed.mp4").write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"zeroed\.mp4: no decodable video frames"):
        extract_frames(tmp_path / "zeroed.mp4", tmp_path / "o2", 5)
    with pytest.raises(InputError, match="video file not found|input not found"):
        load_frames(tmp_path / "missing.mp4")


def test_truncated_video_is_reported(tmp_path):
    """A file cut in half (index at the front, so it still opens) is used, with a warning."""
    from vggsfm_ns.progress import PipelineObserver

    class Messages(PipelineObserver):
        def __init__(self):
            self.got = []

        def message(self, text, level="info"):
            self.got.append((level, text))

    rng = np.random.default_rng(3)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(40)]
    _encode(tmp_path / "full.mp4", frames, movflags="faststart")
    raw = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "half.mp4").write_bytes(raw[: len(raw) // 2])
    full, half = Messages(), Messages()
    extract_frames(tmp_path / "full.mp4", tmp_path / "o1", 10, observer=full)
    fs = extract_frames(tmp_path / "half.mp4", tmp_path / "o2", 10, observer=half)
    assert full.got == []
    assert 0 < len(fs) < 10
    warn = [t for lvl, t in half.got if lvl == "warning" and "decoding stopped after" in t]
    assert len(warn) == 1 and "of the 40 frames the file declares" in warn[0] and f"{len(fs)} frames were extracted" in warn[0]


def test_bundled_sample_video():
    sample = Path(__file__).resolve().parents[1] / "assets" / "sample" / "video.mp4"
    info = probe_video(sample)
    assert (info.num_frames, info.fps, info.size, info.rotation) == (50, 10.0, (1296, 720), 0)
