"""Bad input through the command line: one line naming the file and the problem, a non-zero exit,
no traceback, and nothing written (no dataset, no temporary folders)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vggsfm_ns.process.cli import main as cli_main

VGGSFM_NS = [sys.executable, "-m", "vggsfm_ns.process.cli"]
NS_PROCESS_DATA = [
    sys.executable,
    "-c",
    "import sys; from nerfstudio.scripts.process_data import entrypoint; sys.argv[0] = 'ns-process-data'; sys.exit(entrypoint())",
]


def _images(d: Path, n: int, size=(40, 30), ext=".png") -> None:
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        a = np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(a).save(d / f"f{i}{ext}")


def _make(case: str, root: Path):
    """Input path for ``case`` and the path the error must name."""
    d = root / "in"
    if case == "missing":
        return d, d
    if case == "empty":
        d.mkdir()
        return d, d
    if case == "no_images":
        d.mkdir()
        (d / "a.txt").write_text("x")
        (d / "b.mp3").write_bytes(b"\0" * 10)
        return d, d
    if case == "truncated":
        _images(d, 4, ext=".jpg")
        raw = (d / "f1.jpg").read_bytes()
        (d / "f1.jpg").write_bytes(raw[: len(raw) // 3])
        return d, d / "f1.jpg"
    if case == "unreadable":
        _images(d, 4)
        (d / "f3.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
        return d, d / "f3.png"
    if case == "two_images":
        _images(d, 2)
        return d, d
    if case == "video_junk":
        root.mkdir(exist_ok=True)
        v = root / "clip.mp4"
        v.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 200)
        return v, v
    if case == "mixed_sizes_shared":
        _images(d, 3)
        Image.fromarray(np.zeros((31, 40, 3), np.uint8)).save(d / "f9.png")
        return d, d / "f9.png"
    raise AssertionError(case)


PATTERNS = {
    "missing": "input not found",
    "empty": "folder is empty",
    "no_images": "no images found",
    "truncated": "cannot decode image",
    "unreadable": "cannot decode image",
    "two_images": r"only 2 frame\(s\); a reconstruction needs at least 3",
    "video_junk": "cannot open video|no decodable video frames",
    "mixed_sizes_shared": r"is 40x31 but f0\.png is 40x30 \(2 different sizes\); --shared-camera",
}


def _check_one_line(text: str, must_name: Path, pattern: str) -> None:
    import re

    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, text
    assert lines[0].startswith("Error: ")
    assert str(must_name) in lines[0]
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in text


def _nothing_written(root: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("case", ["missing", "truncated", "video_junk", "mixed_sizes_shared"])
def test_cli_subprocess(tmp_path, case):
    src, name = _make(case, tmp_path)
    out = tmp_path / "scene"
    extra = ["--shared-camera"] if case == "mixed_sizes_shared" else []
    r = subprocess.run(VGGSFM_NS + ["process", "--data", str(src), "--output-dir", str(out)] + extra, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stdout.strip() == ""
    _check_one_line(r.stderr, name, PATTERNS[case])
    _nothing_written(tmp_path, out)


@pytest.mark.parametrize("case", sorted(PATTERNS))
def test_cli_in_process(tmp_path, case, capsys):
    src, name = _make(case, tmp_path)
    out = tmp_path / "sub" / "scene"
    extra = ["--shared-camera"] if case == "mixed_sizes_shared" else []
    with pytest.raises(SystemExit) as e:
        cli_main(["process", "--data", str(src), "--output-dir", str(out), "--num-frames-target", "5"] + extra)
    assert e.value.code == 2
    cap = capsys.readouterr()
    assert cap.out.strip() == ""
    _check_one_line(cap.err, name, PATTERNS[case])
    assert not (tmp_path / "sub").exists()


def test_existing_dataset_refused_through_ns_process_data(tmp_path):
    """Through nerfstudio's own entry point (the .pth hook): it would exit 0 on ValueError, ours exit 2."""
    _images(tmp_path / "in", 3)
    out = tmp_path / "scene"
    (out / "images").mkdir(parents=True)
    (out / "transforms.json").write_text('{"frames": []}')
    r = subprocess.run(NS_PROCESS_DATA + ["vggsfm", "--data", str(tmp_path / "in"), "--output-dir", str(out)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    _check_one_line(r.stderr, out, "already holds a dataset; pass --overwrite to replace it")
    assert (out / "transforms.json").read_text() == '{"frames": []}'
    assert sorted(p.name for p in out.iterdir()) == ["images", "transforms.json"]


def test_output_containing_the_input_is_refused_even_with_overwrite(tmp_path, capsys):
    out = tmp_path / "scene"
    _images(out / "images", 3)
    (out / "transforms.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        cli_main(["process", "--data", str(out / "images"), "--output-dir", str(out), "--overwrite"])
    assert e.value.code == 2
    _check_one_line(capsys.readouterr().err, out / "images", "replacing it would delete the input")
    assert len(list((out / "images").iterdir())) == 3


@pytest.mark.parametrize(
    "args, pattern, code",
    [
        (["--eval-data", "x"], "--eval-data is not supported by vggsfm", 2),
        (["--checkpoint", "/nonexistent/vggsfm_v2_0_0.bin"], "checkpoint file not found", 2),
        (["--intrinsics-file", "/nonexistent/k.json"], "intrinsics file not found", 2),
        (["--intrinsics", "file"], "--intrinsics file needs --intrinsics-file", 2),
        (["--masks", "/nonexistent/masks"], "mask folder not found", 2),
        (["--max-query-pts", "0"], "--max-query-pts must be positive", 2),
        (["--query-method", "sift+grd"], "--query-method 'sift+grd': unknown 'grd'; choose from aliked, sift, grid, gftt", 2),
    ],
)
def test_bad_options(tmp_path, capsys, args, pattern, code):
    _images(tmp_path / "in", 3)
    with pytest.raises(SystemExit) as e:
        cli_main(["process", "--data", str(tmp_path / "in"), "--output-dir", str(tmp_path / "scene")] + args)
    assert e.value.code == code
    err = capsys.readouterr().err
    assert len([ln for ln in err.splitlines() if ln.strip()]) == 1 and pattern in err and "Traceback" not in err
    assert not (tmp_path / "scene").exists()


def test_short_reason_is_one_line_cut_at_a_word():
    from vggsfm_ns.errors import short_reason

    long = ValueError("\n  Weights only load failed. This file can still be loaded, to do so you have two options, " + "word " * 60 + "\nsecond line")
    r = short_reason(long)
    assert r.startswith("Weights only load failed.") and r.endswith("...") and len(r) <= 163
    assert "\n" not in r and not r[:-3].endswith((" ", "wor", "wo"))  # cut between words
    assert short_reason(OSError(28, "No space left on device")) == "No space left on device"
    assert short_reason(KeyError()) == "KeyError"
    assert short_reason(RuntimeError("short")) == "short"
