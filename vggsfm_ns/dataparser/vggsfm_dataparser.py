"""nerfstudio dataparser for the folders ``ns-process-data vggsfm`` writes (``docs/output_format.md``).

It is nerfstudio's own ``nerfstudio-data`` parser (:class:`~nerfstudio.data.dataparsers.nerfstudio_dataparser.Nerfstudio`),
extended. Everything nerfstudio users know works unchanged: shared or per-frame intrinsics and
distortion, ``mask_path`` masks, ``depth_file_path`` depth maps, ``applied_transform``,
``ply_file_path`` seed points, the ``fraction`` / ``interval`` / ``filename`` / ``all`` train-eval
splits, ``orientation_method`` / ``center_method`` / ``auto_scale_poses`` / ``scale_factor`` and the
``images_N`` / ``masks_N`` / ``depths_N`` downscaled copies. What this parser adds:

* our per-frame quality flag (``frames[].vggsfm_reliable`` in ``transforms.json``, else
  ``vggsfm_report.json``), reported at load time and optionally used to drop unreliable frames
  *before* orientation, centring and scaling (one wildly wrong pose would otherwise shrink the
  auto-scaled scene);
* the depth unit stored by the exporter (``vggsfm_depth_unit_scale_factor``), 1e-3 (millimetres of
  scene units) when absent, never a ZoeDepth / torch.hub fallback;
* seed points read with ``plyfile`` (:mod:`vggsfm_ns.io.ply`; binary or ASCII PLY, no open3d needed), the choice between
  ``sparse_pc.ply`` and ``dense_pc.ply``, and, for a plain dataset without a ply, the points of
  ``colmap/sparse/0`` read in memory instead of nerfstudio's interactive "update the dataset?" prompt;
* clear one-line errors (:class:`vggsfm_ns.errors.InputError`) for a missing ``transforms.json``,
  image or ply file instead of assertion tracebacks.

Like nerfstudio's parser, the output ``metadata`` holds ``depth_filenames`` (or None),
``depth_unit_scale_factor``, ``mask_color`` and, when points were loaded, ``points3D_xyz``
(float32 ``[N, 3]``, dataparser world) / ``points3D_rgb`` (uint8 ``[N, 3]``); it adds
``vggsfm_reliable`` (bool ``[I]``) and ``vggsfm_frame_error_px`` (float32 ``[I]``, NaN when
unknown) for the ``I`` images of the split.

How the parent is reused: nerfstudio's ``_generate_dataparser_outputs`` reads ``transforms.json``
through its module-level ``load_from_json``. While it runs, that name is wrapped so that reading *our*
``transforms.json`` returns the prepared (filtered) dictionary; every other file is read normally.
nerfstudio is pinned to 1.1.5, where that name exists (checked at call time).
"""

from __future__ import annotations

import copy
import math
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, Literal, Optional, Tuple, Type

import numpy as np
import torch
from nerfstudio.data.dataparsers import nerfstudio_dataparser as _ns_parser
from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig
from nerfstudio.utils.rich_utils import CONSOLE

from ..conventions import DEPTH_UNIT_SCALE_FACTOR, LEGACY_APPLIED_TRANSFORM
from ..errors import InputError
from ..geometry.camera import apply_affine
from ..io.colmap import model_points, read_model
from ..io.ply import read_ply
from ..io.transforms import read_json_object, read_transforms

#: Depth unit of the exporter's 16-bit PNGs when ``transforms.json`` does not say
#: (:data:`vggsfm_ns.conventions.DEPTH_UNIT_SCALE_FACTOR`).
DEFAULT_DEPTH_UNIT_SCALE_FACTOR = DEPTH_UNIT_SCALE_FACTOR

_COLMAP_MODEL_DIR = Path("colmap/sparse/0")
_REPORT_NAME = "vggsfm_report.json"
_PATCH_LOCK = threading.RLock()


@dataclass
class VGGSfMDataParserConfig(NerfstudioDataParserConfig):
    """Options of ``ns-train <method> vggsfm``: nerfstudio's ``nerfstudio-data`` options plus ours.

    ``data`` is the folder written by ``ns-process-data vggsfm`` (or any nerfstudio dataset folder,
    or a ``transforms.json`` file).
    """

    _target: Type = field(default_factory=lambda: VGGSfMDataParser)
    """target class to instantiate"""
    load_3D_points: bool = True
    """Load the seed points ("ply_file_path") for splatfacto's initialisation."""
    depth_unit_scale_factor: Optional[float] = None
    """Multiplies the stored depth values into "transform_matrix" units. Default: the dataset's
    "vggsfm_depth_unit_scale_factor", else 1e-3 (16-bit PNGs in millimetres)."""
    points: Literal["auto", "sparse", "dense"] = "auto"
    """Seed points: "auto" = the dataset's "ply_file_path" ("dense_pc.ply" after
    "--dense-init", else "sparse_pc.ply"); "sparse" / "dense" force that file."""
    exclude_unreliable: bool = False
    """Drop the frames our quality report flags as unreliable (too few inliers or a mean
    reprojection error over the report's threshold) before orienting and scaling the poses."""
    load_masks: bool = True
    """Use the dataset's "mask_path" masks (255 = keep, 0 = ignore)."""
    load_depths: bool = True
    """Pass the dataset's "depth_file_path" depth maps on (metadata depth_filenames)."""


@dataclass
class _FrameInfo:
    reliable: bool
    error_px: float


@dataclass
class VGGSfMDataParser(Nerfstudio):
    """Reads a VGGSfM output folder (or any nerfstudio ``transforms.json`` dataset).

    Cameras follow nerfstudio: ``camera_to_worlds [I, 3, 4]`` OpenGL axes in the dataparser world
    (``dataparser_transform @ applied_transform`` of the COLMAP world, times ``dataparser_scale``);
    intrinsics in pixels with the pixel-corner convention (``cx = W / 2`` is the image centre).

    Raises (from :meth:`get_dataparser_outputs`):
        vggsfm_ns.errors.InputError: missing/unreadable ``transforms.json``, no frames, a listed image
            or ply file that does not exist, every frame excluded as unreliable.
    """

    config: VGGSfMDataParserConfig

    # ------------------------------------------------------------------ inputs

    def _paths(self) -> Tuple[Path, Path]:
        data = Path(self.config.data)
        json_path = data if data.suffix == ".json" else data / "transforms.json"
        if not json_path.is_file():
            raise InputError("no transforms.json here (run ns-process-data vggsfm first, or pass the dataset folder)", json_path)
        return json_path, json_path.parent

    def _read_report(self, data_dir: Path) -> Dict[str, Dict[str, Any]]:
        """``vggsfm_report.json`` frames by name (``{}`` when absent or unreadable; warns then)."""
        path = data_dir / _REPORT_NAME
        if not path.is_file():
            return {}
        try:
            report = read_json_object(path)
            return {str(f["name"]): f for f in report.get("frames", []) if isinstance(f, dict) and "name" in f}
        except (InputError, TypeError, AttributeError) as e:
            CONSOLE.print(f"[bold yellow]Warning: ignoring {path}: {e}")
            return {}

    def _choose_ply(self, meta: Dict[str, Any], data_dir: Path, json_path: Path) -> Optional[str]:
        """The ``ply_file_path`` value to hand to nerfstudio (relative to ``data_dir``), or None."""
        cfg = self.config
        if cfg.points in ("sparse", "dense"):
            name = "sparse_pc.ply" if cfg.points == "sparse" else "dense_pc.ply"
            if not (data_dir / name).is_file():
                raise InputError(f"--points {cfg.points} asked but {name} does not exist", data_dir / name)
            return name
        if "ply_file_path" in meta:
            rel = str(meta["ply_file_path"])
            if not (data_dir / rel).exists():
                raise InputError(f"ply_file_path {rel!r} does not exist", json_path)
            return rel
        if (data_dir / "sparse_pc.ply").is_file():
            return "sparse_pc.ply"
        if (data_dir / _COLMAP_MODEL_DIR).is_dir():
            # Read the COLMAP points in memory (see _load_3D_points) instead of nerfstudio's prompt.
            return _COLMAP_MODEL_DIR.as_posix()
        return None

    def _prepare_meta(self, meta: Dict[str, Any], data_dir: Path, json_path: Path) -> Dict[str, Any]:
        """Apply our options to a copy of ``transforms.json``; fills ``self._frame_info``."""
        cfg = self.config
        meta = copy.deepcopy(meta)
        frames = meta["frames"]  # checked by read_transforms
        report = self._read_report(data_dir)

        info: Dict[str, _FrameInfo] = {}
        kept, dropped = [], []
        for i, fr in enumerate(frames):
            if not (data_dir / fr["file_path"]).is_file():
                raise InputError(f"frame {i}: image {fr['file_path']!r} not found", json_path)
            name = Path(fr["file_path"]).name
            rep = report.get(name, {})
            if "vggsfm_reliable" in fr:
                reliable = bool(fr["vggsfm_reliable"])
            else:  # the report's flag; frames without any flag count as reliable
                reliable = bool(rep.get("reliable", True))
            err = rep.get("mean_reproj_error_px")
            err = float(err) if isinstance(err, (int, float)) else math.nan
            info[name] = _FrameInfo(reliable, err)
            (dropped if (cfg.exclude_unreliable and not reliable) else kept).append(fr)
            if not cfg.load_masks:
                fr.pop("mask_path", None)
            if not cfg.load_depths:
                fr.pop("depth_file_path", None)

        flagged = sorted(n for n, f in info.items() if not f.reliable)
        if flagged and not getattr(self, "_reported_flags", False):  # once, not per split
            self._reported_flags = True
            if cfg.exclude_unreliable:
                CONSOLE.print(f"[bold yellow]vggsfm: excluding {len(flagged)} unreliable frame(s): {', '.join(flagged[:8])}{' ...' if len(flagged) > 8 else ''}")
            else:
                CONSOLE.print(
                    f"[yellow]vggsfm: {len(flagged)} of {len(info)} frame(s) are flagged unreliable in the quality report "
                    f"(pass --exclude-unreliable True to the vggsfm dataparser to drop them)"
                )
        if not kept:
            raise InputError("every frame is flagged unreliable; nothing left to train on (drop --exclude-unreliable)", json_path)
        meta["frames"] = kept

        if dropped:
            gone = {Path(fr["file_path"]).name for fr in dropped}
            for key in ("train_filenames", "val_filenames", "test_filenames"):
                if key in meta:
                    meta[key] = [x for x in meta[key] if Path(x).name not in gone]

        ply = self._choose_ply(meta, data_dir, json_path) if cfg.load_3D_points else None
        if ply is None:
            meta.pop("ply_file_path", None)
        else:
            meta["ply_file_path"] = ply
        self._frame_info = info
        self._applied_transform = meta.get("applied_transform", LEGACY_APPLIED_TRANSFORM.tolist())
        return meta

    # ------------------------------------------------------------------ main

    def _generate_dataparser_outputs(self, split: str = "train"):
        json_path, data_dir = self._paths()
        raw = read_transforms(json_path)
        meta = self._prepare_meta(raw, data_dir, json_path)
        with _serve_meta(json_path, meta):
            outputs = super()._generate_dataparser_outputs(split)

        md = outputs.metadata
        md["depth_unit_scale_factor"] = self.resolved_depth_unit_scale_factor(meta)
        names = [Path(p).name for p in outputs.image_filenames]
        md["vggsfm_reliable"] = torch.tensor([self._frame_info[n].reliable if n in self._frame_info else True for n in names], dtype=torch.bool)
        md["vggsfm_frame_error_px"] = torch.tensor(
            [self._frame_info[n].error_px if n in self._frame_info else math.nan for n in names], dtype=torch.float32
        )
        return outputs

    def resolved_depth_unit_scale_factor(self, meta: Dict[str, Any]) -> float:
        """The depth multiplier in effect: the option, else the dataset's
        ``vggsfm_depth_unit_scale_factor``, else :data:`DEFAULT_DEPTH_UNIT_SCALE_FACTOR`."""
        if self.config.depth_unit_scale_factor is not None:
            return float(self.config.depth_unit_scale_factor)
        value = meta.get("vggsfm_depth_unit_scale_factor")
        return float(value) if isinstance(value, (int, float)) else DEFAULT_DEPTH_UNIT_SCALE_FACTOR

    def _load_3D_points(self, ply_file_path: Path, transform_matrix: torch.Tensor, scale_factor: float):
        """Seed points into the dataparser world (replaces nerfstudio's open3d reader).

        Args:
            ply_file_path: PLY file (binary or ASCII; ``x y z`` + optional ``red green blue`` uchar or
                float colours) in the saved (``transforms.json``) world, or a COLMAP model folder
                (points in the COLMAP world; ``applied_transform`` is applied first).
            transform_matrix: ``[3, 4]`` saved world → dataparser world (orientation and centring).
            scale_factor: the dataparser scale.

        Returns:
            ``{"points3D_xyz": float32 [N, 3], "points3D_rgb": uint8 [N, 3]}``, or None for 0 points.

        Raises:
            InputError: unreadable file or a PLY without a ``vertex`` element.
        """
        path = Path(ply_file_path)
        if path.is_dir():
            _, xyz, rgb, _ = model_points(read_model(path))
            xyz = apply_affine(xyz, self._applied_transform)
        else:
            xyz, rgb = read_ply(path)
        if xyz.shape[0] == 0:
            return None
        pts = torch.from_numpy(xyz.astype(np.float32))
        pts = torch.cat([pts, torch.ones_like(pts[:, :1])], -1) @ transform_matrix.T.to(pts.dtype)
        pts = pts * scale_factor
        return {"points3D_xyz": pts, "points3D_rgb": torch.from_numpy(rgb)}


@contextmanager
def _serve_meta(json_path: Path, meta: Dict[str, Any]) -> Iterator[None]:
    """While active, nerfstudio's parser module reads ``meta`` (a fresh copy) for ``json_path``."""
    original = getattr(_ns_parser, "load_from_json", None)
    if original is None:  # pragma: no cover - guards a nerfstudio refactor
        raise RuntimeError("nerfstudio.data.dataparsers.nerfstudio_dataparser.load_from_json is gone; vggsfm_ns supports nerfstudio 1.1.5")
    target = json_path.resolve()

    def load(filename: Path):
        if Path(filename).resolve() == target:
            return copy.deepcopy(meta)
        return original(filename)

    with _PATCH_LOCK:
        _ns_parser.load_from_json = load
        try:
            yield
        finally:
            _ns_parser.load_from_json = original


__all__ = ["VGGSfMDataParserConfig", "VGGSfMDataParser", "DEFAULT_DEPTH_UNIT_SCALE_FACTOR"]
