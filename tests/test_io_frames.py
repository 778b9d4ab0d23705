"""Image-folder input: ordering, names, EXIF orientation and focal length, masks, pixel formats, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vggsfm_ns.errors import InputError
from vggsfm_ns.io.atomic import atomic_output_dir, check_output_dir
from vggsfm_ns.io.frames import check_uniform_size, load_frames, match_masks, natural_key
from vggsfm_ns.io.images import exif_focal_px_from_tags, image_info, read_image
from vggsfm_ns.io.ply import read_ply, write_ply


def _img(path: Path, w: int = 40, h: int = 30, seed: int = 0, **save_kw) -> np.ndarray:
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    Image.fromarray(a).save(path, **save_kw)
    return a


def test_folder_sorted_by_name_keeps_names_and_sizes(tmp_path):
    for n in ["img10.png", "img2.png", "img1.png", "b.jpg", "a.JPG"]:
        _img(tmp_path / n)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.png").write_bytes(b"junk")
    (tmp_path / "sub").mkdir()
    fs = load_frames(tmp_path)
    assert fs.names == ["a.JPG", "b.jpg", "img1.png", "img2.png", "img10.png"]
    assert [p.name for p in fs.paths] == fs.names
    assert fs.sizes.tolist() == [[40, 30]] * 5
    assert not fs.ordered and fs.source == tmp_path
    assert fs.exif_focal_px == [None] * 5
    assert sorted(["x10", "x9", "x09a"], key=natural_key) == ["x9", "x09a", "x10"]


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((30, 40, 3), np.uint8)
    a[:5, :8] = 255  # white block at the stored top-left
    ex = Image.Exif()
    ex[0x0112] = 6  # "rotate 90 CW to display"
    for i in range(3):
        Image.fromarray(a).save(tmp_path / f"f{i}.png", exif=ex)
    fs = load_frames(tmp_path)
    assert fs.sizes.tolist() == [[30, 40]] * 3
    img = fs.image(0)
    assert img.shape == (40, 30, 3)
    # after a clockwise quarter turn the stored top-left corner is at the top-right
    assert img[:8, -5:].min() == 255 and img[-8:, :5].max() == 0
    info = image_info(fs.paths[0])
    assert info.orientation == 6 and not info.is_plain_rgb8


def test_exif_focal_length(tmp_path):
    ex = Image.Exif()
    ifd = ex.get_ifd(0x8769)
    ifd[0x920A] = 4.0  # FocalLength mm
    ifd[0xA20E] = 250.0  # FocalPlaneXResolution, px per cm
    ifd[0xA210] = 3  # unit: cm
    _img(tmp_path / "a.jpg", 400, 300, exif=ex)
    ex35 = Image.Exif()
    ex35.get_ifd(0x8769)[0xA405] = 28  # FocalLengthIn35mmFilm
    _img(tmp_path / "b.jpg", 400, 300, exif=ex35)
    _img(tmp_path / "c.jpg", 400, 300)
    fs = load_frames(tmp_path)
    assert fs.exif_focal_px[0] == pytest.approx(4.0 * 25.0)  # 4 mm x 25 px/mm
    assert fs.exif_focal_px[1] == pytest.approx(28.0 / np.hypot(36, 24) * 500.0)  # diagonal 500 px
    assert fs.exif_focal_px[2] is None
    # resized after capture: PixelXDimension 800 -> image is 400 wide -> half the focal length
    assert exif_focal_px_from_tags({0x920A: 4.0, 0xA20E: 250.0, 0xA210: 3, 0xA002: 800}, 400, 300) == pytest.approx(50.0)
    # inch unit (2) and implausible values
    assert exif_focal_px_from_tags({0x920A: 5.0, 0xA20E: 2540.0, 0xA210: 2}, 4000, 3000) == pytest.approx(500.0)
    assert exif_focal_px_from_tags({0xA405: 28}, 4000, 3000) == pytest.approx(28 / np.hypot(36, 24) * 5000)
    assert exif_focal_px_from_tags({0xA405: 100000}, 400, 300) is None
    assert exif_focal_px_from_tags({0x920A: 0}, 400, 300) is None


def test_grayscale_rgba_16bit_become_rgb8(tmp_path):
    gray = np.arange(30 * 40, dtype=np.uint8).reshape(30, 40)
    Image.fromarray(gray, "L").save(tmp_path / "a_gray.png")
    rgba = np.random.default_rng(1).integers(0, 256, (30, 40, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "b_rgba.png")
    g16 = (np.arange(30 * 40, dtype=np.uint32).reshape(30, 40) * 54).astype(np.uint16)  # up to 64746
    Image.fromarray(g16).save(tmp_path / "c_gray16.png")
    fs = load_frames(tmp_path)
    a, b, c = (fs.image(i) for i in range(3))
    for x in (a, b, c):
        assert x.dtype == np.uint8 and x.shape == (30, 40, 3)
    assert np.array_equal(a[..., 0], gray) and np.array_equal(a[..., 2], gray)
    assert np.array_equal(b, rgba[..., :3])
    expect = np.clip(g16.astype(np.float64) / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(c[..., 1], expect)
    assert c[-1, -1, 0] == 252 and c[0, 1, 0] == 0
    assert not image_info(tmp_path / "c_gray16.png").is_plain_rgb8
    assert not image_info(tmp_path / "b_rgba.png").is_plain_rgb8


def test_masks_matched_by_name_or_stem(tmp_path):
    imgs, masks = tmp_path / "img", tmp_path / "masks"
    imgs.mkdir()
    masks.mkdir()
    for n in ["a.jpg", "b.jpg", "c.jpg"]:
        _img(imgs / n)
    m = np.zeros((30, 40), np.uint8)
    m[10:20, 5:15] = 1  # VGGSfM convention: 1 = dynamic
    Image.fromarray(m).save(masks / "a.png")  # by stem
    Image.fromarray(m * 255).save(masks / "b.jpg.png")  # by full name + .png
    from vggsfm_ns.progress import PipelineObserver

    class Messages(PipelineObserver):
        def __init__(self):
            self.got = []

        def message(self, text, level="info"):
            self.got.append((level, text))

    obs = Messages()
    fs = load_frames(imgs, masks=masks, observer=obs)
    assert [p.name if p else None for p in fs.mask_paths] == ["a.png", "b.jpg.png", None]
    assert obs.got == [("warning", "masks: 2 of 3 frames have a mask; the others (e.g. c.jpg) are used whole")]
    dyn = fs.mask(0)
    assert dyn.dtype == bool and dyn.sum() == 100 and dyn[15, 10] and not dyn[0, 0]
    assert fs.mask(2) is None and fs.has_masks
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(masks / "c.png")
    with pytest.raises(InputError, match=r"c\.png: mask is 10x10 but frame c\.jpg is 40x30"):
        load_frames(imgs, masks=masks)
    with pytest.raises(InputError, match="mask folder not found"):
        match_masks(["a.jpg"], tmp_path / "nope")


@pytest.mark.parametrize(
    "case, pattern",
    [
        ("missing", "input not found"),
        ("empty", "folder is empty"),
        ("no_images", "no images found"),
        ("truncated_jpg", "cannot decode image"),
        ("truncated_png", "cannot decode image"),
        ("not_an_image", "cannot decode image"),
        ("two_frames", "only 2 frame"),
        ("single_image", "is a single image"),
    ],
)
def test_bad_folders(tmp_path, case, pattern):
    d = tmp_path / "in"
    bad_name = None
    if case != "missing":
        d.mkdir()
    if case == "no_images":
        (d / "readme.txt").write_text("hello")
    if case.startswith("truncated") or case == "not_an_image":
        ext = ".png" if case == "truncated_png" else ".jpg"
        for i in range(4):
            _img(d / f"f{i}{ext}", 64, 48, seed=i, **({"quality": 90} if ext == ".jpg" else {}))
        bad_name = f"f2{ext}"
        raw = (d / bad_name).read_bytes()
        (d / bad_name).write_bytes(raw[: len(raw) // 2] if case != "not_an_image" else b"this is not an image at all")
    if case == "two_frames":
        for i in range(2):
            _img(d / f"f{i}.png")
    if case == "single_image":
        _img(d / "x.png")
        d = d / "x.png"
    with pytest.raises(InputError, match=pattern) as ei:
        load_frames(d)
    msg = str(ei.value)
    assert "\n" not in msg
    assert str(d / bad_name if bad_name else d) in msg


def test_every_bad_image_is_named_at_once(tmp_path):
    for i in range(5):
        _img(tmp_path / f"f{i}.png", 64, 48, seed=i)
    for name in ("f1.png", "f3.png"):
        raw = (tmp_path / name).read_bytes()
        (tmp_path / name).write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"2 unreadable images \(remove or fix them\): .*f1\.png: cannot decode image.*; .*f3\.png: cannot decode image") as ei:
        load_frames(tmp_path)
    assert "\n" not in str(ei.value)


def test_mixed_sizes_supported_but_not_shared(tmp_path):
    _img(tmp_path / "a.png", 40, 30)
    _img(tmp_path / "b.png", 40, 30)
    _img(tmp_path / "c.png", 50, 30)
    fs = load_frames(tmp_path)
    assert fs.sizes.tolist() == [[40, 30], [40, 30], [50, 30]]
    with pytest.raises(InputError, match=r"c\.png: is 50x30 but a\.png is 40x30 \(2 different sizes\); --shared-camera"):
        check_uniform_size(fs)
    check_uniform_size(fs.subset([0, 1]))


def test_read_image_errors_name_the_file(tmp_path):
    p = tmp_path / "gone.png"
    with pytest.raises(InputError, match="gone.png: file not found"):
        read_image(p)


def test_ply_roundtrip(tmp_path):
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(100, 3))
    rgb = rng.integers(0, 256, (100, 3), dtype=np.uint8)
    p = write_ply(tmp_path / "p.ply", xyz, rgb)
    assert p.read_bytes()[:60].count(b"binary_little_endian") == 1
    x2, c2 = read_ply(p)
    assert x2.dtype == np.float32 and np.allclose(x2, xyz, atol=1e-6) and np.array_equal(c2, rgb)
    x3, c3 = read_ply(write_ply(tmp_path / "q.ply", xyz[:3]))
    assert np.array_equal(c3, np.full((3, 3), 128))
    with pytest.raises(ValueError):
        write_ply(tmp_path / "r.ply", xyz, rgb[:5])
    # bad files: one clear InputError naming the file
    with pytest.raises(InputError, match="gone.ply: ply file not found"):
        read_ply(tmp_path / "gone.ply")
    (tmp_path / "junk.ply").write_bytes(b"not a ply at all\n")
    with pytest.raises(InputError, match="junk.ply: cannot read point cloud"):
        read_ply(tmp_path / "junk.ply")
    (tmp_path / "face.ply").write_text("ply\nformat ascii 1.0\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n")
    with pytest.raises(InputError, match="face.ply: cannot read point cloud"):
        read_ply(tmp_path / "face.ply")


def test_process_temp_dir_is_removed_at_exit(tmp_path):
    """Frames decoded for an API call without ``work_dir`` do not outlive the process."""
    import os
    import subprocess
    import sys

    code = (
        "from vggsfm_ns.io.atomic import process_temp_dir\n"
        "a, b = process_temp_dir('vggsfm_ns_t_'), process_temp_dir('vggsfm_ns_t_')\n"
        "(a / 'f.png').write_bytes(b'x'); (b / 'sub').mkdir()\n"
        "print(a); print(b)\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    made = [Path(x) for x in out.stdout.split()]
    assert len(made) == 2 and all(p.parent == tmp_path and p.name.startswith("vggsfm_ns_t_") for p in made)
    assert not any(p.exists() for p in made)


def test_atomic_output_dir(tmp_path):
    target = tmp_path / "a" / "b" / "scene"
    with pytest.raises(RuntimeError):
        with atomic_output_dir(target) as tmp:
            (tmp / "transforms.json").write_text("{}")
            raise RuntimeError("boom")
    assert not (tmp_path / "a").exists()  # parents created for the run are removed again
    with pytest.raises(KeyboardInterrupt):
        with atomic_output_dir(target):
            raise KeyboardInterrupt
    assert not (tmp_path / "a").exists()
    with atomic_output_dir(target) as tmp:
        (tmp / "transforms.json").write_text("1")
    assert (target / "transforms.json").read_text() == "1"
    assert sorted(p.name for p in target.parent.iterdir()) == ["scene"]
    from vggsfm_ns.errors import OutputExistsError

    with pytest.raises(OutputExistsError, match="already holds a dataset; pass --overwrite"):
        check_output_dir(target)
    with atomic_output_dir(target, overwrite=True) as tmp:
        (tmp / "transforms.json").write_text("2")
    assert (target / "transforms.json").read_text() == "2"
    assert sorted(p.name for p in target.parent.iterdir()) == ["scene"]
    # an input inside the target is never replaced, even with overwrite
    (target / "video.mp4").write_bytes(b"x")
    with pytest.raises(InputError, match="replacing it would delete the input"):
        check_output_dir(target, overwrite=True, inputs=[target / "video.mp4"])
    # a dataset with the user's own files beside it is not replaced either: they would be lost
    (target / "video.mp4").unlink()
    for d in ("images_2", "masks_4", "depths", "visuals"):
        (target / d).mkdir()
    check_output_dir(target, overwrite=True)  # dataset entries only: fine
    (target / "raw").mkdir()
    (target / "notes.md").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"holds a dataset and other files \(notes.md, raw\); --overwrite replaces"):
        check_output_dir(target, overwrite=True)
    with pytest.raises(OutputExistsError, match="other files"):
        with atomic_output_dir(target, overwrite=True):
            raise AssertionError("not reached: refused before the block")
    assert (target / "notes.md").read_text() == "mine" and (target / "raw").is_dir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="not a dataset"):
        check_output_dir(other, overwrite=True)
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"notes.txt/sub: is inside .*notes.txt, which is a file, not a folder"):
        check_output_dir(tmp_path / "notes.txt" / "sub")
    empty = tmp_path / "empty"
    empty.mkdir()
    inode = empty.stat().st_ino
    with atomic_output_dir(empty) as tmp:
        (tmp / "transforms.json").write_text("3")
        (tmp / "images").mkdir()
    assert (empty / "transforms.json").read_text() == "3" and (empty / "images").is_dir()
    # an existing empty folder is filled in place (a shell inside it, --output-dir ., sees the dataset)
    assert empty.stat().st_ino == inode and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_filling_an_empty_folder_is_all_or_nothing(tmp_path, monkeypatch):
    """A failure while the entries move into an existing empty folder moves them back."""
    import os

    import vggsfm_ns.io.atomic as atomic

    target = tmp_path / "scene"
    target.mkdir()
    real_rename = os.rename
    order = []

    def flaky(src, dst):
        order.append(Path(dst).name)
        if Path(dst).name == "transforms.json" and Path(dst).parent == target:
            raise OSError(28, "No space left on device")
        return real_rename(src, dst)

    monkeypatch.setattr(atomic.os, "rename", flaky)
    with pytest.raises(OSError):
        with atomic_output_dir(target) as tmp:
            for name in ("transforms.json", "vggsfm_report.json", "sparse_pc.ply"):
                (tmp / name).write_text(name)
            (tmp / "images").mkdir()
    assert order[:4] == ["images", "sparse_pc.ply", "vggsfm_report.json", "transforms.json"]  # markers last
    assert list(target.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["scene"]


def _count_opens(monkeypatch):
    import vggsfm_ns.io.images as images_mod

    calls = []
    real_open = images_mod.Image.open

    def counting_open(fp, *a, **k):
        calls.append(Path(fp).name)
        return real_open(fp, *a, **k)

    monkeypatch.setattr(images_mod.Image, "open", counting_open)
    return calls


def test_decoded_image_cache_decodes_each_file_once(tmp_path, monkeypatch):
    from vggsfm_ns.io.images import decoded_image_cache

    a = _img(tmp_path / "a.png")
    calls = _count_opens(monkeypatch)
    with decoded_image_cache(max_mb=1):
        info = image_info(tmp_path / "a.png")  # full PNG decode check: keeps the pixels
        first = read_image(tmp_path / "a.png")
        first[:] = 0  # the caller owns its copy
        with decoded_image_cache(max_mb=0):  # nested: the outer cache stays
            second = read_image(tmp_path / "a.png")
    assert info.size == (40, 30)
    assert calls == ["a.png"]
    np.testing.assert_array_equal(second, a)
    assert second.flags.writeable
    # outside the block nothing is kept
    read_image(tmp_path / "a.png")
    assert calls == ["a.png", "a.png"]


def test_decoded_image_cache_sees_changed_files_and_respects_budget(tmp_path, monkeypatch):
    import os

    from vggsfm_ns.io.images import decoded_image_cache

    _img(tmp_path / "a.png", seed=1)
    big = _img(tmp_path / "big.png", w=400, h=300, seed=2)  # 360 kB: over a 0.1 MiB budget
    calls = _count_opens(monkeypatch)
    with decoded_image_cache(max_mb=0.1):
        read_image(tmp_path / "a.png")
        b = _img(tmp_path / "a.png", seed=3)  # rewritten: new content, new mtime
        st = os.stat(tmp_path / "a.png")
        os.utime(tmp_path / "a.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        np.testing.assert_array_equal(read_image(tmp_path / "a.png"), b)
        np.testing.assert_array_equal(read_image(tmp_path / "big.png"), big)
        np.testing.assert_array_equal(read_image(tmp_path / "big.png"), big)
    assert calls == ["a.png", "a.png", "big.png", "big.png"]


def test_decoded_image_cache_env_budget(monkeypatch):
    from vggsfm_ns.io.images import decoded_image_cache

    monkeypatch.setenv("VGGSFM_NS_IMAGE_CACHE_MB", "lots")
    with pytest.raises(ValueError, match="VGGSFM_NS_IMAGE_CACHE_MB"):
        with decoded_image_cache():
            pass


@pytest.mark.parametrize("text,match", [
    ("[1, 2]", "expected a JSON object at the top level, got list"),
    ("{\"frames\": [", "invalid JSON"),
    ("{\"camera_model\": \"OPENCV\"}", "lists no frames"),
    ("{\"frames\": {\"a\": 1}}", "lists no frames"),
    ("{\"frames\": [{\"file_path\": \"images/a.png\"}]}", "frame 0 needs file_path and transform_matrix"),
    ("{\"frames\": [[1, 2]]}", "frame 0 needs file_path and transform_matrix"),
    ("{\"frames\": [{\"file_path\": \"images/a.png\", \"transform_matrix\": [[1, 0], [0, 1]]}]}", r"frame 0 \(images/a.png\): transform_matrix must be"),
    ("{\"frames\": [{\"file_path\": \"images/a.png\", \"transform_matrix\": \"eye\"}]}", r"frame 0 \(images/a.png\): transform_matrix must be"),
])
def test_malformed_transforms_json_is_one_input_error_everywhere(tmp_path, text, match):
    """The dataparser, the viewer and the pose metrics share one reader: same message, file named."""
    from vggsfm_ns.io.transforms import read_transforms
    from vggsfm_ns.metrics import load_reference_poses
    from vggsfm_ns.viewer.view import load_dataset

    p = tmp_path / "transforms.json"
    p.write_text(text)
    for fn in (read_transforms, load_dataset, load_reference_poses):
        with pytest.raises(InputError, match=f"transforms.json: {match}"):
            fn(p)
    with pytest.raises(InputError, match="no transforms.json or COLMAP model"):
        load_reference_poses(tmp_path / "nothing")


def test_reference_poses_from_transforms(tmp_path):
    """OpenGL c2w in the file -> OpenCV w2c keyed by stem; 3x4 matrices are accepted."""
    import json

    from vggsfm_ns.metrics import load_reference_poses

    c2w = np.eye(4)
    c2w[:3, 3] = [1.0, 2.0, 3.0]
    meta = {"frames": [{"file_path": "images/a.png", "transform_matrix": c2w.tolist()},
                       {"file_path": "images/b.jpg", "transform_matrix": c2w[:3].tolist()}]}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    poses = load_reference_poses(tmp_path)
    expect = np.array([[1.0, 0, 0, -1], [0, -1, 0, 2], [0, 0, -1, 3]])
    assert sorted(poses) == ["a", "b"]
    np.testing.assert_allclose(poses["a"], expect)
    np.testing.assert_allclose(poses["b"], expect)
