"""A freshly built wheel, installed into an overlay environment, provides ``ns-process-data vggsfm``
(through the ``.pth`` hook shipped at the top of site-packages) and the ``vggsfm-ns`` script.

The overlay is a ``venv --without-pip`` whose site-packages first holds the wheel and then, through
a ``.pth``, the test environment's site-packages (torch, nerfstudio...), so nothing heavy is
installed twice. That ``.pth`` does what ``site.addsitedir`` does but skips the test environment's
own vggsfm ``.pth`` files (editable path, hook), so only the wheel's files can make the checks pass.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# What the ns-process-data console script runs.
NS_PROCESS_DATA = "import sys; from nerfstudio.scripts.process_data import entrypoint; sys.argv[0] = 'ns-process-data'; sys.exit(entrypoint())"


def _run(cmd, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VGGSFM_NS_NO_HOOK")}
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=300, env=env, **kw)
    assert r.returncode == 0, f"{cmd}\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.fixture(scope="module")
def overlay(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wheel")
    dist = tmp / "dist"
    isolation = [] if importlib.util.find_spec("hatchling") is None else ["--no-build-isolation"]
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "--wheel-dir", dist, REPO])
    wheels = list(dist.glob("vggsfm_ns-*.whl"))
    assert len(wheels) == 1
    ov = tmp / "overlay"
    _run([sys.executable, "-m", "venv", "--without-pip", ov])
    ov_python = ov / "bin" / "python"
    ov_site = Path(_run([ov_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip())
    base_site = sysconfig.get_paths()["purelib"]
    # (no free names inside the comprehension: .pth lines run in exec(), whose locals it cannot see)
    (ov_site / "_vggsfm_ns_overlay.pth").write_text(
        f"import sys; sys.path.append({base_site!r}); "
        f"[__import__('site').addpackage({base_site!r}, n, None) for n in sorted(__import__('os').listdir({base_site!r})) "
        f"if n.endswith('.pth') and 'vggsfm' not in n]\n"
    )
    # --ignore-installed: the test environment's own vggsfm-ns is visible through the overlay .pth
    _run([sys.executable, "-m", "pip", "--python", ov_python, "install", "--no-deps", "--no-index", "--ignore-installed", wheels[0]])
    return wheels[0], ov, ov_site


def test_wheel_contents(overlay):
    wheel, _, _ = overlay
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        pth = z.read("vggsfm_ns_process_data.pth").decode()
        hook_src = z.read("vggsfm_ns_hook.py")
        ep = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "import vggsfm_ns_hook" in pth and "install()" in pth
    assert hook_src == (REPO / "vggsfm_ns_hook.py").read_bytes()
    for f in ["vggsfm_ns_hook.py", "vggsfm_ns/__init__.py", "vggsfm_ns/process/converter.py", "vggsfm_ns/process/cli.py",
              "vggsfm_ns/export/nerfstudio.py", "vggsfm_ns/io/video.py"]:
        assert f in names, f
    assert not any(n.startswith("tests/") for n in names)
    assert "vggsfm-ns = vggsfm_ns.process.cli:main" in ep
    assert "[nerfstudio.dataparser_configs]" in ep


def test_ns_process_data_lists_vggsfm_from_the_wheel(overlay):
    _, ov, ov_site = overlay
    py = ov / "bin" / "python"
    where = _run([py, "-c", "import sys; started = 'vggsfm_ns' in sys.modules; import vggsfm_ns, vggsfm_ns_hook as h; "
                  "print(vggsfm_ns.__file__); print(h.__file__); print(started); print(any(isinstance(f, h.ProcessDataFinder) for f in sys.meta_path))"], cwd=ov)
    path, hook_path, imported_at_start, active = where.split()
    # the wheel's copies; the hook is active at start-up without importing the vggsfm_ns package
    assert Path(path).is_relative_to(ov_site) and Path(hook_path).is_relative_to(ov_site)
    assert active == "True" and imported_at_start == "False"
    assert "import vggsfm_ns_hook" in (ov_site / "vggsfm_ns_process_data.pth").read_text()
    r = subprocess.run([str(py), "-c", "pass"], capture_output=True, text=True, timeout=60)
    assert r.stderr == ""  # every .pth line ran cleanly
    out = _run([py, "-c", NS_PROCESS_DATA, "--help"], cwd=ov)
    assert "vggsfm" in out.split("usage:")[1].splitlines()[0]  # {images,video,...,vggsfm}
    assert "VGGSfM v2 structure from motion" in out


def test_vggsfm_ns_script_from_the_wheel(overlay):
    _, ov, _ = overlay
    script = ov / "bin" / "vggsfm-ns"
    assert script.read_text().splitlines()[0] == f"#!{ov / 'bin' / 'python'}"
    out = _run([script, "--help"], cwd=ov)
    assert "process" in out and "view" in out
    out = _run([script, "process", "--help"], cwd=ov)
    assert "--num-frames-target" in out and "--tracker" in out
