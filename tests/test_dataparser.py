"""The ``vggsfm`` nerfstudio dataparser on a synthetic output folder (``docs/output_format.md``).

Everything runs on CPU through nerfstudio's own ``FullImageDatamanager`` (splatfacto's datamanager)
and ``Cameras.generate_rays``. Ground truth comes from ``synthetic_scene_export.make_scene``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from synthetic_scene_export import make_scene
from vggsfm_ns.errors import InputError

REPO = Path(__file__).resolve().parents[1]
# nerfstudio's Cameras index with lists internally; torch warns about it on every ray batch.
pytestmark = pytest.mark.filterwarnings("ignore:Using a non-tuple sequence:UserWarning")


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_scene(tmp_path_factory.mktemp("vggsfm_scene") / "scene")


def _parser_outputs(data, split="train", **kw):
    from vggsfm_ns.dataparser.vggsfm_dataparser import VGGSfMDataParserConfig

    return VGGSfMDataParserConfig(data=Path(data), **kw).setup().get_dataparser_outputs(split)


def _to_dataparser_world(outputs, X):
    """COLMAP-world points ``(N, 3)`` -> dataparser world (applied transform, orientation, scale)."""
    T = outputs.dataparser_transform.double().numpy()  # (3, 4), includes applied_transform
    return (X @ T[:, :3].T + T[:, 3]) * outputs.dataparser_scale


def _ray_errors_px(cameras, cam_idx: int, xy_corner: np.ndarray, X: np.ndarray) -> np.ndarray:
    """Distance of each point from the ray through its 2D observation, in pixels at that depth."""
    coords = torch.from_numpy(xy_corner[:, ::-1].copy()).float()  # nerfstudio coords are (y, x)
    rays = cameras.generate_rays(camera_indices=torch.full((len(coords), 1), cam_idx), coords=coords)
    o = rays.origins.double().numpy()
    d = rays.directions.double().numpy()
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    v = X - o
    t = (v * d).sum(-1)
    dist = np.linalg.norm(v - t[:, None] * d, axis=-1)
    fx = float(cameras.fx[cam_idx])
    return dist / t * fx


def _index_by_name(filenames, names):
    return [next(i for i, f in enumerate(filenames) if Path(f).name == n) for n in names]


def test_full_image_datamanager_images_points_masks_depth_rays(scene):
    """splatfacto's datamanager (CPU) with our parser: every registered image, the seed points,
    masks, depth in dataparser units, and rays through every 2D observation of the model."""
    from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
    from nerfstudio.data.datasets.depth_dataset import DepthDataset

    from vggsfm_ns.dataparser import VGGSfMDataParserConfig

    cfg = FullImageDatamanagerConfig(
        _target=FullImageDatamanager[DepthDataset],
        dataparser=VGGSfMDataParserConfig(),
        data=scene.root,
        cache_images="gpu",  # "gpu" means the datamanager's device, here the CPU
        cache_images_type="uint8",
    )
    dm = cfg.setup(device="cpu")
    train = dm.train_dataparser_outputs
    evals = dm.eval_dataset._dataparser_outputs
    # Default split (fraction 0.9 of 6 frames, rounded up): every registered frame is a train frame.
    assert [Path(p).name for p in train.image_filenames] == scene.names
    assert len(evals.image_filenames) == 0

    # Seed points: ply (applied world) -> dataparser world, same as the COLMAP points.
    md = train.metadata
    expect = _to_dataparser_world(train, scene.points[scene.in_model])
    assert md["points3D_xyz"].shape == (len(scene.in_model), 3) and md["points3D_xyz"].dtype == torch.float32
    np.testing.assert_allclose(md["points3D_xyz"].double().numpy(), expect, atol=2e-6)
    assert torch.equal(md["points3D_rgb"], torch.from_numpy(scene.colors[scene.in_model]))
    assert md["depth_unit_scale_factor"] == pytest.approx(1e-3)
    assert [Path(p).name for p in md["depth_filenames"]] == [Path(p).name for p in train.image_filenames]

    cams = dm.train_dataset.cameras
    X_dp = _to_dataparser_world(train, scene.points)
    worst = 0.0
    for k, fname in enumerate(train.image_filenames):
        i = scene.names.index(Path(fname).name)
        data = dm.cached_train[k]
        W, H = scene.size
        assert tuple(data["image"].shape) == (H, W, 3) and data["image"].dtype == torch.uint8
        # Mask: 255 keep / 0 ignore -> True keep; the synthetic mask zeroes the top-left 12x12.
        m = data["mask"][..., 0]
        assert m.dtype == torch.bool and int((~m).sum()) == 144 and not bool(m[:12, :12].any())
        # Depth: PNG mm of scene units -> dataparser units (x 1e-3 x dataparser_scale).
        depth = data["depth_image"][..., 0].double().numpy()
        np.testing.assert_allclose(depth, scene.depth_png[scene.names[i]] * 1e-3 * train.dataparser_scale, rtol=1e-6)
        o = scene.obs[i]
        px = np.floor(o["xy"]).astype(int)
        z_front = depth[px[:, 1], px[:, 0]] / train.dataparser_scale
        # The depth at an observation is that point's z when it is the nearest there, else nearer.
        assert np.all(z_front <= o["z"] + 0.6e-3)
        assert (np.abs(z_front - o["z"]) < 0.6e-3).mean() > 0.3
        # Rays through the model's 2D observations pass through the triangulated 3D points.
        in_img = scene.recon.image(i + 1)
        xy = np.array([p.xy for p in in_img.points2D])
        pids = [p.point3D_id for p in in_img.points2D]
        X = np.array([scene.recon.point3D(pid).xyz for pid in pids])
        err = _ray_errors_px(cams, k, xy, _to_dataparser_world(train, X))
        worst = max(worst, float(err.max()))
        # The same rays hit the ground-truth points of this frame's observations.
        err_gt = _ray_errors_px(cams, k, o["xy"], X_dp[o["idx"]])
        worst = max(worst, float(err_gt.max()))
    print(f"max ray-to-point distance: {worst:.2e} px")
    assert worst < 1e-3, worst

    cam, batch = dm.next_train(0)
    assert batch["image"].shape == (72, 96, 3) and "depth_image" in batch and "mask" in batch


def test_per_frame_intrinsics_and_distortion_rays(tmp_path):
    """Per-frame OPENCV intrinsics with distortion: nerfstudio's distorted ray generation through
    each observation passes through the point (the parser keeps k1 k2 p1 p2 per frame)."""
    sc = make_scene(tmp_path / "s", per_frame_intrinsics=True, distortion=True, masks=False, depth=False, seed=3)
    out = _parser_outputs(sc.root, eval_mode="all")
    cams = out.cameras
    assert cams.fx.shape == (6, 1) and len(torch.unique(cams.fx)) == 6
    idx = _index_by_name(out.image_filenames, sc.names)
    np.testing.assert_allclose(cams.distortion_params[idx][:, [0, 1, 4, 5]].numpy(), sc.dist, atol=1e-7)
    X_dp = _to_dataparser_world(out, sc.points)
    worst = max(float(_ray_errors_px(cams, k, sc.obs[i]["xy"], X_dp[sc.obs[i]["idx"]]).max()) for i, k in enumerate(idx))
    print(f"max ray-to-point distance with distortion: {worst:.2e} px")
    assert worst < 1e-3, worst
    assert out.mask_filenames is None and out.metadata["depth_filenames"] is None


def test_exclude_unreliable_frames(scene):
    out_all = _parser_outputs(scene.root, eval_mode="all")
    assert out_all.metadata["vggsfm_reliable"].tolist() == [True, True, True, False, True, True]
    err = out_all.metadata["vggsfm_frame_error_px"].numpy()
    np.testing.assert_allclose(err, [0.2, 0.2, 0.2, 3.5, 0.2, 0.2])

    out = _parser_outputs(scene.root, eval_mode="all", exclude_unreliable=True)
    names = [Path(p).name for p in out.image_filenames]
    assert names == [n for i, n in enumerate(scene.names) if scene.reliable[i]]
    assert out.metadata["vggsfm_reliable"].all()
    assert len(out.mask_filenames) == 5 and len(out.metadata["depth_filenames"]) == 5
    # Poses stay consistent with the points after the re-orientation on 5 frames.
    X_dp = _to_dataparser_world(out, scene.points)
    for k, n in enumerate(names):
        i = scene.names.index(n)
        assert _ray_errors_px(out.cameras, k, scene.obs[i]["xy"], X_dp[scene.obs[i]["idx"]]).max() < 5e-3


def test_split_modes(scene):
    tr = _parser_outputs(scene.root, "train", eval_mode="interval", eval_interval=2)
    ev = _parser_outputs(scene.root, "val", eval_mode="interval", eval_interval=2)
    assert [Path(p).name for p in ev.image_filenames] == scene.names[0::2]
    assert [Path(p).name for p in tr.image_filenames] == scene.names[1::2]
    # The split is applied after orientation/scale: both splits share one dataparser transform.
    assert torch.equal(tr.dataparser_transform, ev.dataparser_transform) and tr.dataparser_scale == ev.dataparser_scale
    fr = _parser_outputs(scene.root, "val", train_split_fraction=0.5)
    assert len(fr.image_filenames) == 3
    off = _parser_outputs(scene.root, "train", eval_mode="all", load_masks=False, load_depths=False, load_3D_points=False)
    assert off.mask_filenames is None and off.metadata["depth_filenames"] is None and "points3D_xyz" not in off.metadata


def _strip_ours(root: Path):
    meta = json.loads((root / "transforms.json").read_text())
    for k in [k for k in meta if k.startswith("vggsfm_")]:
        del meta[k]
    for fr in meta["frames"]:
        for k in [k for k in fr if k.startswith("vggsfm_")]:
            del fr[k]
    (root / "vggsfm_report.json").unlink()
    return meta


def test_plain_transforms_json(scene, tmp_path):
    """A nerfstudio dataset without our keys or report; then without a ply (COLMAP points are read
    in memory, no interactive prompt); then without either (no seed points)."""
    root = tmp_path / "plain"
    shutil.copytree(scene.root, root)
    meta = _strip_ours(root)
    (root / "transforms.json").write_text(json.dumps(meta))
    out = _parser_outputs(root / "transforms.json", eval_mode="all")  # a .json path works too
    assert len(out.image_filenames) == 6 and out.metadata["vggsfm_reliable"].all()
    assert torch.isnan(out.metadata["vggsfm_frame_error_px"]).all()
    assert out.metadata["depth_unit_scale_factor"] == pytest.approx(1e-3)
    expect = _to_dataparser_world(out, scene.points[scene.in_model])
    np.testing.assert_allclose(out.metadata["points3D_xyz"].double().numpy(), expect, atol=2e-6)

    del meta["ply_file_path"]
    (root / "transforms.json").write_text(json.dumps(meta))
    (root / "sparse_pc.ply").unlink()
    out = _parser_outputs(root, eval_mode="all")
    got = out.metadata["points3D_xyz"].double().numpy()
    np.testing.assert_allclose(got, _to_dataparser_world(out, scene.points[scene.in_model]), atol=2e-6)

    shutil.rmtree(root / "colmap")
    out = _parser_outputs(root, eval_mode="all")
    assert "points3D_xyz" not in out.metadata


def test_depth_unit_override_and_errors(scene, tmp_path):
    out = _parser_outputs(scene.root, eval_mode="all", depth_unit_scale_factor=1.0)
    assert out.metadata["depth_unit_scale_factor"] == 1.0
    with pytest.raises(InputError, match="transforms.json"):
        _parser_outputs(tmp_path)
    with pytest.raises(InputError, match="dense_pc.ply"):
        _parser_outputs(scene.root, points="dense")
    bad = tmp_path / "bad"
    shutil.copytree(scene.root, bad)
    (bad / "images" / scene.names[2]).unlink()
    with pytest.raises(InputError, match=scene.names[2]):
        _parser_outputs(bad)
    meta = json.loads((bad / "transforms.json").read_text())
    for fr in meta["frames"]:
        fr["vggsfm_reliable"] = False
    (bad / "images" / scene.names[2]).write_bytes((scene.root / "images" / scene.names[2]).read_bytes())
    (bad / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="unreliable"):
        _parser_outputs(bad, exclude_unreliable=True)


def test_plugin_registered_and_training_commands(tmp_path):
    """The entry point resolves to our specification (also after the submodule was imported), and
    the documented training commands parse with nerfstudio's own CLI union."""
    from importlib.metadata import entry_points

    import vggsfm_ns.dataparser as dp
    from nerfstudio.plugins.registry_dataparser import DataParserSpecification
    from vggsfm_ns.dataparser.vggsfm_dataparser import VGGSfMDataParserConfig

    (ep,) = [e for e in entry_points(group="nerfstudio.dataparser_configs") if e.name == "vggsfm"]
    spec = ep.load()
    assert isinstance(spec, DataParserSpecification) and spec is dp.vggsfm_dataparser
    assert isinstance(spec.config, VGGSfMDataParserConfig) and spec.config.load_3D_points

    cmds = dp.training_commands(tmp_path / "my scene")
    assert cmds[0] == f"ns-train splatfacto --data '{tmp_path / 'my scene'}' vggsfm"
    assert "--pipeline.model.camera-optimizer.mode SO3xR3" in cmds[1]


@pytest.mark.slow
def test_ns_train_cli_lists_dataparser(tmp_path):
    """``ns-train`` (subprocess) knows the ``vggsfm`` dataparser, shows its options, and the commands
    of :func:`training_commands` parse into splatfacto configs with our dataparser (pose refinement on)."""
    exe = REPO / ".venv" / "bin" / "ns-train"
    if not exe.exists():
        exe = Path(shutil.which("ns-train") or "ns-train")
    env = {**os.environ, "COLUMNS": "200"}
    r = subprocess.run([str(exe), "--help"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and "splatfacto" in r.stdout and "Could not entry point" not in r.stdout + r.stderr
    r = subprocess.run([str(exe), "splatfacto", "--help"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0 and ",colmap,vggsfm}" in r.stdout and "• vggsfm" in r.stdout
    r = subprocess.run([str(exe), "splatfacto", "vggsfm", "--help"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    for flag in ("--exclude-unreliable", "--points", "--depth-unit-scale-factor", "--eval-mode", "--orientation-method"):
        assert flag in r.stdout

    code = (
        "import shlex, sys, tyro\n"
        "from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion\n"
        "for line in sys.argv[1:]:\n"
        "    c = tyro.cli(AnnotatedBaseConfigUnion, args=shlex.split(line)[1:])\n"
        "    dp = c.pipeline.datamanager.dataparser\n"
        "    print(type(dp).__name__, c.data, c.pipeline.model.camera_optimizer.mode, dp.load_3D_points)\n"
    )
    import vggsfm_ns.dataparser as dpk

    data = tmp_path / "scene"
    r = subprocess.run([sys.executable, "-c", code, *dpk.training_commands(data)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()[-2:]
    assert lines == [f"VGGSfMDataParserConfig {data} off True", f"VGGSfMDataParserConfig {data} SO3xR3 True"]


def test_reads_the_exporters_output(tmp_path):
    """Contract with ``vggsfm_ns.export.export_nerfstudio``: its folder parses, with every registered
    frame, the seed points and rays through the model's observations."""
    from synthetic_scene_export import make_result

    from vggsfm_ns.export.nerfstudio import export_nerfstudio

    sc = make_scene(tmp_path / "src", num_frames=6, num_points=150, unregistered=(4,), unreliable=(), masks=False, depth=False, seed=5)
    out_dir = tmp_path / "exported"
    export_nerfstudio(make_result(sc), out_dir)
    out = _parser_outputs(out_dir, eval_mode="all")
    reg_names = [n for i, n in enumerate(sc.names) if sc.registered[i]]
    assert [Path(p).name for p in out.image_filenames] == reg_names
    np.testing.assert_allclose(
        np.sort(out.metadata["points3D_xyz"].double().numpy(), 0), np.sort(_to_dataparser_world(out, sc.points[sc.in_model]), 0), atol=2e-6
    )
    X_dp = _to_dataparser_world(out, sc.points)
    for k, n in enumerate(reg_names):
        i = sc.names.index(n)
        assert _ray_errors_px(out.cameras, k, sc.obs[i]["xy"], X_dp[sc.obs[i]["idx"]]).max() < 1e-3
