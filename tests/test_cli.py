"""The converter (``ns-process-data vggsfm`` / ``vggsfm-ns process``): options -> config, the run
orchestration (frames -> reconstruct -> export -> visuals -> summary, with a stand-in
``reconstruct``), the viewer option, the ``vggsfm-ns`` CLI, and the ``ns-process-data`` hook."""

from __future__ import annotations

import json
import subprocess
import sys
import types
import typing
from pathlib import Path

import pytest
import tyro
from _scene import make_scene

import vggsfm_ns_hook as hook
from vggsfm_ns.process.cli import main as cli_main
from vggsfm_ns.process.converter import VGGSfMToNerfstudioDataset


def _conv(**kw) -> VGGSfMToNerfstudioDataset:
    return VGGSfMToNerfstudioDataset(data=Path("in"), output_dir=Path("out"), **kw)


def test_post_init_creates_nothing(tmp_path):
    c = VGGSfMToNerfstudioDataset(data=tmp_path / "in", output_dir=tmp_path / "a" / "out")
    assert not (tmp_path / "a").exists()
    assert c.image_dir == tmp_path / "a" / "out" / "images"


def test_build_config_preset_and_overrides(tmp_path):
    cfg = _conv().build_config()
    assert (cfg.mode, cfg.track.tracker, cfg.track.max_query_pts, cfg.camera.camera_type, cfg.camera.shared_camera) == (
        "auto", "auto", 2048, "SIMPLE_PINHOLE", False,
    )
    assert cfg.num_frames_target == 300 and cfg.sfm.extra_pt_pixel_interval == -1 and not cfg.depth.dense_depth

    v = _conv(preset="video").build_config()
    assert v.mode == "video" and v.camera.shared_camera and v.camera.camera_type == "SIMPLE_RADIAL"
    v2 = _conv(preset="video", mode="sparse", camera_type="PINHOLE", max_query_pts=512).build_config()
    assert (v2.mode, v2.camera.camera_type, v2.track.max_query_pts, v2.camera.shared_camera) == ("sparse", "PINHOLE", 512, True)

    kfile = tmp_path / "k.json"
    kfile.write_text("{}")
    ckpt = tmp_path / "vggsfm_v2_0_0.bin"
    ckpt.write_bytes(b"0")
    c = _conv(
        preset="fast", tracker="sift", query_method="sift+grid", query_frame_num=5, shared_camera=True, intrinsics_file=kfile,
        fix_intrinsics=True, dense_init=True, depth_model="/models/da", extra_points=8, device="cpu", verbose=True,
        num_frames_target=120, checkpoint=ckpt,
    ).build_config()
    assert c.track.max_query_pts == 1024 and c.track.tracker == "sift" and c.track.query_method == "sift+grid"
    assert c.track.query_frame_num == 5 and c.track.checkpoint == ckpt
    assert c.camera.shared_camera and c.camera.intrinsics == "file" and c.camera.intrinsics_file == kfile and c.camera.fix_intrinsics
    assert c.depth.dense_depth and c.depth.dense_init and c.depth.depth_model == "/models/da"
    assert c.sfm.extra_pt_pixel_interval == 8 and c.sfm.concat_extra_points
    assert (c.device, c.verbose, c.num_frames_target) == ("cpu", True, 120)
    d = _conv(preset="dense", extra_points=-1).build_config()
    assert d.depth.dense_init and d.sfm.extra_pt_pixel_interval == -1 and not d.sfm.concat_extra_points


def test_tyro_parses_our_option_names():
    args = [
        "--data", "v.mp4", "--output-dir", "s", "--num-frames-target", "50", "--num-downscales", "2", "--camera-type", "OPENCV",
        "--tracker", "klt", "--query-method", "aliked+sift", "--max-query-pts", "999", "--query-frame-num", "4", "--shared-camera",
        "--intrinsics", "exif", "--fix-intrinsics", "--dense-depth", "--extra-points", "12", "--mode", "video", "--preset", "fast",
        "--device", "cpu", "--viewer", "--viewer-port", "8123", "--visuals", "--overwrite", "--verbose",
    ]
    c = tyro.cli(VGGSfMToNerfstudioDataset, args=args)
    assert (c.num_frames_target, c.num_downscales, c.camera_type, c.tracker, c.max_query_pts, c.query_frame_num) == (50, 2, "OPENCV", "klt", 999, 4)
    assert c.shared_camera and c.fix_intrinsics and c.dense_depth and c.viewer and c.visuals and c.overwrite and c.verbose
    assert (c.intrinsics, c.extra_points, c.mode, c.preset, c.device, c.viewer_port) == ("exif", 12, "video", "fast", "cpu", 8123)


class _Recorder:
    """Stand-in for the live viewer observer."""

    url = "http://127.0.0.1:7999"

    def __init__(self):
        self.events, self.waited, self.closed = [], False, False

    def stage_started(self, name, total=None):
        self.events.append(("start", name))

    def stage_advanced(self, name, advance=1, note=None):
        pass

    def stage_finished(self, name, seconds):
        self.events.append(("end", name))

    def message(self, text, level="info"):
        self.events.append(("msg", text))

    def reconstruction_updated(self, snapshot):
        pass

    def wait(self):
        self.waited = True

    def close(self):
        self.closed = True


def _fake_modules(monkeypatch, result, calls, recorder=None):
    def reconstruct(source, config=None, observer=None, masks=None, work_dir=None):
        calls["source"], calls["config"], calls["observer"], calls["work_dir"] = source, config, observer, work_dir
        assert Path(work_dir).is_dir()
        assert list(source.names) == list(result.frames.names)  # frames loaded by the converter
        result.frames = source
        result.config = config
        return result

    api = types.ModuleType("vggsfm_ns.api")
    api.reconstruct = reconstruct
    monkeypatch.setitem(sys.modules, "vggsfm_ns.api", api)

    def write_visuals(res, output_dir, observer=None):
        calls["visuals"] = Path(output_dir)
        calls["visuals_saw_dataset"] = (Path(output_dir) / "transforms.json").is_file()
        if calls.get("visuals_fail"):
            raise KeyboardInterrupt
        p = Path(output_dir) / "visuals" / "errors.png"
        p.parent.mkdir()
        p.write_bytes(b"png")
        return [p]

    vis = types.ModuleType("vggsfm_ns.visuals")
    vis.write_visuals = write_visuals
    monkeypatch.setitem(sys.modules, "vggsfm_ns.visuals", vis)
    if recorder is not None:
        try:
            import vggsfm_ns.viewer  # noqa: F401
        except ImportError:
            pkg = types.ModuleType("vggsfm_ns.viewer")
            pkg.__path__ = []
            monkeypatch.setitem(sys.modules, "vggsfm_ns.viewer", pkg)
        live = types.ModuleType("vggsfm_ns.viewer.live")

        def start_live_viewer(host="127.0.0.1", port=7007):
            calls["viewer_port"] = port
            return recorder

        live.start_live_viewer = start_live_viewer
        monkeypatch.setitem(sys.modules, "vggsfm_ns.viewer.live", live)


def _failing_api(monkeypatch, exc: BaseException) -> None:
    """A stand-in ``vggsfm_ns.api`` whose ``reconstruct`` raises ``exc``."""
    api = types.ModuleType("vggsfm_ns.api")

    def reconstruct(*a, **k):
        raise exc

    api.reconstruct = reconstruct
    monkeypatch.setitem(sys.modules, "vggsfm_ns.api", api)


def test_process_runs_pipeline_export_and_summary(tmp_path, monkeypatch, capsys):
    res = make_scene(tmp_path, n_frames=6, unregistered=[5])
    calls: dict = {}
    rec = _Recorder()
    _fake_modules(monkeypatch, res, calls, rec)
    out = tmp_path / "scene"
    cli_main([
        "process", "--data", str(tmp_path / "input"), "--output-dir", str(out), "--preset", "fast", "--tracker", "sift",
        "--num-downscales", "1", "--visuals", "--viewer", "--viewer-port", "7999",
    ])
    cfg = calls["config"]
    assert cfg.track.tracker == "sift" and cfg.track.max_query_pts == 1024
    # dataset written, work folder removed, nothing else beside it
    tf = json.loads((out / "transforms.json").read_text())
    assert len(tf["frames"]) == 5 and (out / "images_2").is_dir() and not (out / "images_4").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input", "scene"]
    assert not Path(calls["work_dir"]).exists()
    # the pictures are written inside the atomic folder, next to the finished dataset, before commit
    assert calls["visuals"].parent == out.parent and calls["visuals"].name.startswith(".scene.tmp-")
    assert calls["visuals_saw_dataset"] and (out / "visuals/errors.png").read_bytes() == b"png"
    assert list(json.loads((out / "vggsfm_report.json").read_text())["summary"]["seconds"])[:3] == ["frames", "tracks", "sfm"]
    rep = json.loads((out / "vggsfm_report.json").read_text())
    assert rep["config"]["track"]["tracker"] == "sift"
    # the viewer observed the run and was waited on
    assert ("start", "frames") in rec.events and ("end", "export") in rec.events
    assert rec.waited and rec.closed and calls["viewer_port"] == 7999
    text = capsys.readouterr().out
    assert "5 / 6" in text and "3D points" in text and "img_005.png" in text  # unregistered frame named
    assert f"ns-train splatfacto --data {out}" in text
    assert f"ns-train splatfacto --data {out} --pipeline.model.camera-optimizer.mode SO3xR3" in text
    assert "visuals/errors.png" in text

    # a second run refuses the existing dataset before any work ...
    calls.clear()
    with pytest.raises(SystemExit) as e:
        cli_main(["process", "--data", str(tmp_path / "input"), "--output-dir", str(out)])
    assert e.value.code == 2 and "source" not in calls
    # ... and replaces it with --overwrite
    cli_main(["process", "--data", str(tmp_path / "input"), "--output-dir", str(out), "--overwrite", "--num-downscales", "0"])
    assert not (out / "images_2").exists() and "source" in calls


def test_interrupt_while_writing_visuals_leaves_no_dataset(tmp_path, monkeypatch, capsys):
    """Ctrl+C while the pictures are written: exit 130, and neither dataset nor pictures exist."""
    res = make_scene(tmp_path, n_frames=4)
    calls: dict = {"visuals_fail": True}
    _fake_modules(monkeypatch, res, calls)
    out = tmp_path / "scene"
    with pytest.raises(SystemExit) as e:
        cli_main(["process", "--data", str(tmp_path / "input"), "--output-dir", str(out), "--visuals", "--num-downscales", "0"])
    assert e.value.code == 130 and calls["visuals_saw_dataset"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input"]
    assert "no dataset was written" in capsys.readouterr().err


def test_interrupt_after_commit_says_the_dataset_exists(tmp_path, monkeypatch, capsys):
    """Ctrl+C during the summary, after the rename: exit 130 and the message says it was written."""
    import vggsfm_ns.report as report_mod

    res = make_scene(tmp_path, n_frames=4)
    _fake_modules(monkeypatch, res, {})

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(report_mod, "print_summary", interrupted)
    out = tmp_path / "scene"
    with pytest.raises(SystemExit) as e:
        cli_main(["process", "--data", str(tmp_path / "input"), "--output-dir", str(out), "--num-downscales", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 130 and f"after the dataset was written to {out}" in err and "no dataset" not in err
    assert (out / "transforms.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input", "scene"]  # no work folder left


def test_disk_full_is_one_line_error_without_output(tmp_path, monkeypatch, capsys):
    """An OSError while writing (here: disk full at sparse_pc.ply): the file and the system's reason
    on one line, exit 2, and no dataset or temporary folder left behind."""
    import errno

    import vggsfm_ns.export.nerfstudio as export_mod

    res = make_scene(tmp_path, n_frames=4)
    _fake_modules(monkeypatch, res, {})

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(export_mod, "write_ply", full)
    out = tmp_path / "scene"
    with pytest.raises(SystemExit) as e:
        cli_main(["process", "--data", str(tmp_path / "input"), "--output-dir", str(out), "--num-downscales", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "sparse_pc.ply: No space left on device" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input"]


def test_output_dir_dot_from_an_empty_folder(tmp_path, monkeypatch):
    """``--output-dir .`` inside an empty folder: the work folder goes beside it, not into it."""
    res = make_scene(tmp_path, n_frames=4)
    calls: dict = {}
    _fake_modules(monkeypatch, res, calls)
    here = tmp_path / "here"
    here.mkdir()
    monkeypatch.chdir(here)
    cli_main(["process", "--data", str(tmp_path / "input"), "--output-dir", ".", "--num-downscales", "0"])
    assert Path(calls["work_dir"]).parent == tmp_path
    assert (here / "transforms.json").is_file() and not [p for p in here.iterdir() if p.name.startswith(".")]
    assert Path(".").resolve() == here and (Path(".") / "transforms.json").is_file()  # the shell's folder holds it


def test_internal_error_exits_1_not_0(tmp_path, monkeypatch, capsys):
    """A bug (here a RuntimeError from deep inside) must not look like success: nerfstudio's
    ns-process-data would turn a re-raised RuntimeError into exit 0."""
    make_scene(tmp_path, n_frames=4)
    _failing_api(monkeypatch, RuntimeError("linalg.svd: input matrix contained non-finite values"))
    out = tmp_path / "scene"
    with pytest.raises(SystemExit) as e:
        cli_main(["process", "--data", str(tmp_path / "input"), "--output-dir", str(out)])
    err = capsys.readouterr().err
    assert e.value.code == 1
    assert "Traceback" in err and "non-finite values" in err and "internal error (RuntimeError" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input"]


def test_reconstruction_error_exits_3_without_output(tmp_path, monkeypatch, capsys):
    from vggsfm_ns.errors import ReconstructionError

    make_scene(tmp_path, n_frames=4)
    rec = _Recorder()
    rec.stopped = False
    rec.stop = lambda: setattr(rec, "stopped", True)
    calls: dict = {}
    _fake_modules(monkeypatch, None, calls, rec)
    _failing_api(monkeypatch, ReconstructionError("no initial pair found among 4 frames"))
    with pytest.raises(SystemExit) as e:
        cli_main(["process", "--data", str(tmp_path / "input"), "--output-dir", str(tmp_path / "scene"), "--viewer"])
    assert e.value.code == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["Error: no initial pair found among 4 frames"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input"]
    assert rec.stopped and not rec.waited  # a failed run does not keep the viewer (and the process) alive


def test_vggsfm_ns_help_and_version(capsys):
    with pytest.raises(SystemExit) as e:
        cli_main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "process" in out and "view" in out
    with pytest.raises(SystemExit):
        cli_main(["process", "--help"])
    out = capsys.readouterr().out
    for opt in ["--data", "--output-dir", "--num-frames-target", "--tracker", "--checkpoint", "--query-method", "--max-query-pts",
                "--query-frame-num", "--shared-camera", "--intrinsics-file", "--fix-intrinsics", "--masks", "--dense-depth",
                "--depth-model", "--dense-init", "--extra-points", "--mode", "--preset", "--device", "--viewer-port", "--visuals", "--overwrite"]:
        assert opt in out, opt
    cli_main(["--version"])
    assert capsys.readouterr().out.startswith("vggsfm-ns 0.1.0")


def test_view_command_calls_view_dataset(tmp_path, monkeypatch):
    seen = {}
    try:
        import vggsfm_ns.viewer as viewer_mod
    except ImportError:
        viewer_mod = types.ModuleType("vggsfm_ns.viewer")
        viewer_mod.__path__ = []
        monkeypatch.setitem(sys.modules, "vggsfm_ns.viewer", viewer_mod)

    def view_dataset(path, host="127.0.0.1", port=7007, block=True):
        seen.update(path=path, host=host, port=port, block=block)

    monkeypatch.setattr(viewer_mod, "view_dataset", view_dataset, raising=False)
    cli_main(["view", str(tmp_path), "--port", "8001"])
    assert seen == {"path": tmp_path, "host": "127.0.0.1", "port": 8001, "block": True}
    with pytest.raises(SystemExit) as e:
        cli_main(["view", str(tmp_path / "nope")])
    assert e.value.code == 2


# ------------------------------------------------------------------------------------------------
# ns-process-data hook
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_commands_module():
    @typing.no_type_check
    class A:
        pass

    mod = types.ModuleType("fake_process_data")
    mod.Commands = typing.Union[
        typing.Annotated[A, tyro.conf.subcommand(name="images")],
        typing.Annotated[int, tyro.conf.subcommand(name="video")],
    ]
    return mod


def test_extend_commands(fake_commands_module):
    mod = fake_commands_module
    assert hook.extend_commands(mod)
    args = typing.get_args(mod.Commands)
    assert len(args) == 3
    assert typing.get_args(args[-1])[0] is VGGSfMToNerfstudioDataset
    assert args[-1].__metadata__[0].name == "vggsfm"
    assert hook.extend_commands(mod) and len(typing.get_args(mod.Commands)) == 3  # idempotent
    # a changed nerfstudio layout is left alone
    other = types.ModuleType("x")
    assert not hook.extend_commands(other) and not hasattr(other, "Commands")
    other.Commands = VGGSfMToNerfstudioDataset
    assert not hook.extend_commands(other) and other.Commands is VGGSfMToNerfstudioDataset


def test_finder_patches_process_data_on_import(monkeypatch):
    monkeypatch.delitem(sys.modules, hook.TARGET, raising=False)
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, hook.ProcessDataFinder)])
    monkeypatch.delenv("VGGSFM_NS_NO_HOOK", raising=False)
    assert hook.install() and hook.install()
    assert sum(isinstance(f, hook.ProcessDataFinder) for f in sys.meta_path) == 1
    import importlib

    pd = importlib.import_module(hook.TARGET)
    names = [a.__metadata__[0].name for a in typing.get_args(pd.Commands)]
    assert names[0] == "images" and names[-1] == "vggsfm" and names.count("vggsfm") == 1
    # parsing through nerfstudio's own Commands union builds our converter
    c = tyro.cli(pd.Commands, args=["vggsfm", "--data", "v.mp4", "--output-dir", "s", "--tracker", "klt"])
    assert isinstance(c, VGGSfMToNerfstudioDataset) and c.tracker == "klt"
    # other modules are not touched by the finder
    assert hook.ProcessDataFinder().find_spec("json") is None


def test_interpreter_start_stays_light():
    """The .pth hook runs at every interpreter start: it must not import nerfstudio, torch or numpy."""
    code = "import sys; print(sorted(m for m in ('torch', 'numpy', 'nerfstudio', 'tyro', 'vggsfm_ns.process.converter') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-c", "import sys, vggsfm_ns_hook as h; print(any(isinstance(f, h.ProcessDataFinder) for f in sys.meta_path))"], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "True"  # installed by vggsfm_ns_process_data.pth


def test_readme_and_ci_agree():
    """README's two quick-start commands exist, and .ci/run runs exactly its install and test commands."""
    import re

    repo = Path(__file__).resolve().parents[1]
    readme = (repo / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = [b.strip() for b in re.findall(r"```bash\n(.*?)```", quick, flags=re.S)]
    assert len(blocks) == 2 and all("\n" not in b for b in blocks)
    main_cmd, test_cmd = blocks
    install, tests = test_cmd.split(" && ")
    assert main_cmd.startswith(install + " && ")
    assert "ns-process-data vggsfm --data assets/sample/video.mp4 --output-dir" in main_cmd
    assert (repo / "assets/sample/video.mp4").is_file()
    ci = (repo / ".ci" / "run").read_text().splitlines()
    assert install in ci and tests in ci
    assert ci.index(install) < ci.index(tests)
    assert (repo / ".ci" / "run").stat().st_mode & 0o111 and (repo / "scripts/install.sh").stat().st_mode & 0o111
