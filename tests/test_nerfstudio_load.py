"""nerfstudio's own loaders read our datasets on CPU, and the loaded cameras reproject the loaded
points onto their 2D observations (the full chain: COLMAP model -> transforms.json + ply ->
nerfstudio dataparser transform/scale -> Cameras)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from _scene import make_scene
from PIL import Image

from vggsfm_ns.export import export_nerfstudio

CASES = {
    "shared_simple_radial": dict(n_frames=6, camera_model="SIMPLE_RADIAL", shared=True, unregistered=[4]),
    "per_frame_opencv_mixed_sizes": dict(sizes=[(64, 48), (80, 60), (72, 54), (64, 48), (60, 80)], camera_model="OPENCV", shared=False),
    "noisy_pinhole": dict(n_frames=5, camera_model="PINHOLE", noise_px=0.5),
}


def _project(cameras, i: int, xyz: torch.Tensor) -> np.ndarray:
    """Project ``(N, 3)`` dataparser-world points with camera ``i`` of nerfstudio ``Cameras``
    (OpenGL c2w, OPENCV distortion k1 k2 k3 k4 p1 p2 as nerfstudio stores them)."""
    c2w = cameras.camera_to_worlds[i].double().numpy()
    R = c2w[:, :3] @ np.diag([1.0, -1.0, -1.0])  # OpenGL -> OpenCV camera axes
    p = (xyz.double().numpy() - c2w[:, 3]) @ R  # = R^T (x - t)
    x, y = p[:, 0] / p[:, 2], p[:, 1] / p[:, 2]
    k1, k2, k3, _k4, p1, p2 = cameras.distortion_params[i].double().numpy()
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + 2 * p2 * x * y + p1 * (r2 + 2 * y * y)
    fx, fy, cx, cy = (float(cameras.fx[i]), float(cameras.fy[i]), float(cameras.cx[i]), float(cameras.cy[i]))
    return np.stack([fx * xd + cx, fy * yd + cy], 1)


@pytest.mark.parametrize("case", sorted(CASES))
def test_dataparser_loads_and_points_reproject(tmp_path, case):
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    res = make_scene(tmp_path, **CASES[case])
    out = export_nerfstudio(res, tmp_path / "scene", num_downscales=1)
    recon = res.sfm.reconstruction
    registered = sorted(img.name for img in recon.images.values() if img.has_pose)

    parser = NerfstudioDataParserConfig(data=out, load_3D_points=True, eval_mode="all").setup()
    dpo = parser.get_dataparser_outputs("train")
    names = [Path(p).name for p in dpo.image_filenames]
    assert sorted(names) == registered
    assert all(Path(p).parent.name == "images" for p in dpo.image_filenames)  # small images: no downscale
    xyz = dpo.metadata["points3D_xyz"]
    rgb = dpo.metadata["points3D_rgb"]
    ids = sorted(recon.points3D)
    assert xyz.shape == (len(ids), 3) and rgb.dtype == torch.uint8
    assert np.array_equal(rgb.numpy(), np.array([recon.points3D[k].color for k in ids]))
    row = {pid: r for r, pid in enumerate(ids)}

    errs = []
    for i, name in enumerate(names):
        img = recon.find_image_with_name(name)
        cam = recon.cameras[img.camera_id]
        assert (int(dpo.cameras.width[i]), int(dpo.cameras.height[i])) == (cam.width, cam.height)
        obs = [(p.xy, row[p.point3D_id]) for p in img.points2D if p.has_point3D()]
        xy = np.array([o[0] for o in obs])
        proj = _project(dpo.cameras, i, xyz[[o[1] for o in obs]])
        errs.append(np.linalg.norm(proj - xy, axis=1))
    errs = np.concatenate(errs)
    assert len(errs) > 200
    limit = 2.0 if case == "noisy_pinhole" else 1e-3  # float32 ply + float32 cameras
    assert errs.mean() < limit, errs.mean()
    if case == "noisy_pinhole":
        assert 0.3 < errs.mean() < 1.0  # the 0.5 px observation noise is visible, nothing more


def test_splatfacto_datamanager_on_cpu(tmp_path):
    from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanagerConfig
    from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

    res = make_scene(tmp_path, n_frames=6, camera_model="PINHOLE")
    mdir = tmp_path / "mask_in"
    mdir.mkdir()
    m = np.zeros((48, 64), np.uint8)
    m[:, :16] = 1  # left quarter dynamic
    for i, n in enumerate(res.frames.names):
        Image.fromarray(m).save(mdir / n)
        res.frames.mask_paths[i] = mdir / n
    out = export_nerfstudio(res, tmp_path / "scene", num_downscales=2)

    # splatfacto's datamanager (method_configs["splatfacto"]: FullImageDatamanager + nerfstudio-data
    # parser with load_3D_points, uint8 image cache)
    cfg = FullImageDatamanagerConfig(
        dataparser=NerfstudioDataParserConfig(load_3D_points=True),
        data=out,
        cache_images_type="uint8",
    )
    dm = cfg.setup(device="cpu")
    n_train, n_eval = len(dm.train_dataset), len(dm.eval_dataset)
    assert n_train + n_eval == 6 and n_train >= 5
    cam, batch = dm.next_train(0)
    assert batch["image"].shape == (48, 64, 3)
    assert batch["mask"].shape == (48, 64, 1)
    assert not batch["mask"][:, :16].any() and batch["mask"][:, 16:].all()
    assert int(cam.width) == 64 and int(cam.height) == 48
    md = dm.train_dataparser_outputs.metadata
    assert md["points3D_xyz"].shape[0] == res.sfm.reconstruction.num_points3D()

    # an explicit downscale factor reads images_2 / masks_2 with matching intrinsics
    parser = NerfstudioDataParserConfig(data=out, load_3D_points=True, downscale_factor=2, eval_mode="all").setup()
    dpo = parser.get_dataparser_outputs("train")
    assert all(Path(p).parent.name == "images_2" for p in dpo.image_filenames)
    assert all(Path(p).parent.name == "masks_2" for p in dpo.mask_filenames)
    assert int(dpo.cameras.width[0]) == Image.open(dpo.image_filenames[0]).size[0] == 32
    full = NerfstudioDataParserConfig(data=out, load_3D_points=True, eval_mode="all").setup().get_dataparser_outputs("train")
    assert float(dpo.cameras.fx[0]) == pytest.approx(float(full.cameras.fx[0]) / 2)
