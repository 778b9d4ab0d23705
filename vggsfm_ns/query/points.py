"""Query points: the pixels tracks start from in a query frame.

Source: official ``get_query_points`` (``vggsfm/runners/runner.py``, spec §4.2). Detectors are
joined with ``+`` (``"aliked+sift"``); their points are concatenated and, when there are more than
``max_points``, a random subset is kept (official ``torch.randperm``). We stratify that subset over
a grid of cells so that it stays spread over the image.

Detectors:

* ``aliked``: ALIKED ``aliked-n16`` (kornia's port), detection threshold 0.005, NMS radius 2, at
  most ``max_points`` keypoints (official ``ALIKED(max_num_keypoints, detection_threshold=0.005)``).
  Weights: ``aliked_weights`` or :data:`ALIKED_URL` through ``vggsfm_ns.checkpoints``.
* ``sift``: SIFT keypoints (:func:`extract_sift`, OpenCV by default like the official LightGlue
  ``SIFT`` wrapper, or pycolmap), weight-free.
* ``grid``: a regular grid of about ``max_points`` points.
* ``gftt``: Shi-Tomasi "good features to track" corners (OpenCV), the natural seeds of KLT.

All coordinates are ``(x, y)`` pixels of the processed frame in the pixel-centre convention
(:mod:`vggsfm_ns.conventions`).
"""

from __future__ import annotations

import math
import threading
import warnings
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from ..config import QUERY_POINT_ALIASES, QUERY_POINT_METHODS, unknown_query_methods
from ..conventions import center_to_corner, corner_to_center
from ..errors import CheckpointError, short_reason

#: Official ALIKED ``aliked-n16`` weights (the URL LightGlue's ALIKED wrapper downloads).
ALIKED_URL = "https://github.com/Shiaoming/ALIKED/raw/main/models/aliked-n16.pth"
#: File name of the ALIKED weights in the cache.
ALIKED_FILENAME = "aliked-n16.pth"
#: Official ALIKED settings in ``get_query_points``.
ALIKED_DETECTION_THRESHOLD = 0.005
ALIKED_NMS_RADIUS = 2


#: SIFT implementations understood by :func:`extract_sift`.
SIFT_BACKENDS = ("opencv", "pycolmap")

_ALIKED_CACHE: Dict[Tuple[str, str], torch.nn.Module] = {}
_SIFT_CACHE: Dict[tuple, object] = {}
_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------
# Image helpers
# --------------------------------------------------------------------------------------------


def to_gray_uint8(image: torch.Tensor) -> np.ndarray:
    """``(3, H, W)`` or ``(H, W)`` float RGB/grey in [0, 1] -> ``(H, W)`` uint8 luminance (BT.601)."""
    x = image.detach().float().cpu()
    if x.ndim == 3:
        if x.shape[0] == 1:
            x = x[0]
        elif x.shape[0] == 3:
            x = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
        else:
            raise ValueError(f"expected a (3, H, W) image, got {tuple(image.shape)}")
    elif x.ndim != 2:
        raise ValueError(f"expected a (3, H, W) image, got {tuple(image.shape)}")
    return np.ascontiguousarray((x.clamp(0, 1) * 255.0 + 0.5).to(torch.uint8).numpy())


def processed_gray(frames, transforms, i: int) -> np.ndarray:
    """Frame ``i`` of a :class:`~vggsfm_ns.types.FrameSet` as ``(H', W')`` uint8 grey in its processed frame.

    Fast path for the weight-free trackers: grey conversion (BT.601) and an area resize with
    OpenCV, ~6x cheaper than :func:`vggsfm_ns.preprocess.apply_transform`. Only resize transforms
    (no padding) are supported; the pixel grid is the same as ``apply_transform``'s.

    Raises:
        ValueError: for a transform with padding.
        vggsfm_ns.errors.InputError: if the frame cannot be decoded.
    """
    import cv2

    t = transforms[i]
    if t.pad != (0.0, 0.0):
        raise ValueError("processed_gray supports resize-only transforms")
    img = frames.image(i)
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
    if (img.shape[1], img.shape[0]) != tuple(t.orig_size):
        raise ValueError(f"frame {i} is {img.shape[1]}x{img.shape[0]} but its transform expects {t.orig_size}")
    if tuple(t.size) != (img.shape[1], img.shape[0]):
        interp = cv2.INTER_AREA if t.scale < 1.0 else cv2.INTER_LINEAR
        img = cv2.resize(img, tuple(int(v) for v in t.size), interpolation=interp)
    return np.ascontiguousarray(img)


# --------------------------------------------------------------------------------------------
# SIFT
# --------------------------------------------------------------------------------------------


def extract_sift(
    gray: np.ndarray,
    max_features: int = 4096,
    backend: str = "opencv",
    contrast_threshold: float = 0.02,
    upsample: bool = True,
    upscale: float = 1.0,
    sigma: float = 1.6,
    octave_layers: int = 3,
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detect and describe SIFT features in one grey image.

    Args:
        gray: ``(H, W)`` uint8 grey image (a processed frame).
        max_features: keep at most this many features, the strongest first (OpenCV ranks by
            contrast; pycolmap keeps the coarsest scales). Features with several orientations may
            count once per orientation.
        backend: ``"opencv"`` (``cv2.SIFT``, with ``enable_precise_upscale`` so keypoints are
            unbiased; ~3x faster than pycolmap on CPU) or ``"pycolmap"`` (COLMAP's VLFeat SIFT).
        contrast_threshold: DoG peak threshold in OpenCV units (divided by ``octave_layers``; with
            3 layers, 0.02 equals COLMAP's default ``peak_threshold`` 0.0067).
        upsample: pycolmap only: start at octave -1 (image doubled), COLMAP's default; finds
            about 3x more features on small frames. OpenCV always starts at octave -1.
        upscale: detect on the image enlarged by this factor (bilinear) and map the keypoints
            back (pixel-centre: ``x = (x_up + 0.5) / f - 0.5``). On small frames (< 640 px) a
            factor 2 doubles the repeatable features and improves localisation.
        sigma: base blur (OpenCV ``sigma``; pycolmap keeps COLMAP's own).
        octave_layers: scales sampled per octave (OpenCV ``nOctaveLayers``, COLMAP
            ``octave_resolution``; both default to 3, Lowe's choice). With OpenCV, 2 layers found
            a quarter fewer features in 11-21 % less time on dtu_scan24, kitchen and cake.

    Returns:
        ``xy (N, 2)`` float32 pixel-centre coordinates, ``scale (N,)`` float32 keypoint scale in
        pixels, ``desc (N, 128)`` float32 RootSIFT descriptors (L1-normalised, square-rooted,
        unit L2 norm).

    Raises:
        ValueError: on an unknown backend, an image that is not 2-D uint8, or ``octave_layers`` < 1.
    """
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"extract_sift needs a (H, W) uint8 image, got {gray.shape} {gray.dtype}")
    if int(octave_layers) < 1:
        raise ValueError(f"extract_sift needs at least 1 layer per octave, got {octave_layers}")
    if upscale != 1.0:
        import cv2

        h, w = gray.shape
        bw, bh = int(round(w * upscale)), int(round(h * upscale))
        big = cv2.resize(gray, (bw, bh), interpolation=cv2.INTER_LINEAR)
        xy, scale, desc = extract_sift(big, max_features, backend, contrast_threshold, upsample, 1.0, sigma, octave_layers)
        fx, fy = bw / w, bh / h
        xy = corner_to_center(center_to_corner(xy) / np.array([fx, fy], np.float32)) if len(xy) else xy
        return xy.astype(np.float32), (scale / fx).astype(np.float32), desc
    if backend == "opencv":
        import cv2

        key = ("opencv", int(max_features), float(contrast_threshold), float(sigma), int(octave_layers))
        with _LOCK:
            sift = _SIFT_CACHE.get(key)
            if sift is None:
                sift = cv2.SIFT_create(
                    nfeatures=int(max_features), nOctaveLayers=int(octave_layers), contrastThreshold=float(contrast_threshold),
                    sigma=float(sigma), enable_precise_upscale=True,
                )
                _SIFT_CACHE[key] = sift
        kps, desc = sift.detectAndCompute(gray, None)
        if not kps:
            return np.zeros((0, 2), np.float32), np.zeros((0,), np.float32), np.zeros((0, 128), np.float32)
        xy = np.array([k.pt for k in kps], np.float32)  # OpenCV: pixel-centre convention
        scale = np.array([k.size for k in kps], np.float32) / 2.0
        desc = desc.astype(np.float32)
    elif backend == "pycolmap":
        import pycolmap

        key = ("pycolmap", int(max_features), float(contrast_threshold), bool(upsample), int(octave_layers))
        with _LOCK:
            sift = _SIFT_CACHE.get(key)
            if sift is None:
                opts = pycolmap.FeatureExtractionOptions()
                opts.sift.max_num_features = int(max_features)
                opts.sift.peak_threshold = float(contrast_threshold) / int(octave_layers)
                opts.sift.octave_resolution = int(octave_layers)
                opts.sift.first_octave = -1 if upsample else 0
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    sift = pycolmap.Sift(opts)
                _SIFT_CACHE[key] = sift
        kp, desc = sift.extract(np.ascontiguousarray(gray.astype(np.float32) / 255.0))
        kp = np.asarray(kp, np.float32)
        if kp.shape[0] > max_features:  # COLMAP keeps extra orientations beyond the cap
            kp = kp[:max_features]
            desc = desc[:max_features]
        xy = corner_to_center(kp[:, :2]).astype(np.float32)  # COLMAP: pixel-corner convention
        scale = kp[:, 2].astype(np.float32)
        desc = np.asarray(desc, np.float32)
    else:
        raise ValueError(f"unknown SIFT backend {backend!r}; choose one of {SIFT_BACKENDS}")
    desc = np.abs(desc)
    desc /= np.maximum(desc.sum(1, keepdims=True), 1e-12)
    desc = np.sqrt(desc)
    desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
    return xy, scale, desc.astype(np.float32)


# --------------------------------------------------------------------------------------------
# ALIKED
# --------------------------------------------------------------------------------------------


def load_aliked(weights: Optional[Path] = None, device: Optional[torch.device] = None) -> torch.nn.Module:
    """Kornia's ALIKED ``aliked-n16`` with the official weights, in eval mode (cached per file/device).

    Args:
        weights: local ``aliked-n16.pth`` (a plain state dict, or one under ``"state_dict"``).
            None: :data:`ALIKED_URL` resolved through ``vggsfm_ns.checkpoints.resolve_url_file``
            (cache first, then download unless offline).
        device: torch device (default CPU).

    Returns:
        ``kornia.feature.ALIKED``. Its keypoint settings are set per call by
        :func:`detect_query_points`.

    Raises:
        CheckpointError: if the file is missing, unreadable, or lacks ALIKED parameters.

    Note: ``kornia.feature.ALIKED.from_pretrained`` always downloads and loads with
    ``strict=False``; here a local file is loaded and every learned tensor must be present.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    from ..checkpoints import load_state_dict, resolve_url_file

    if weights is None:
        weights = resolve_url_file(ALIKED_URL, None, ALIKED_FILENAME)
    weights = Path(weights)
    key = (str(weights.resolve()) if weights.exists() else str(weights), str(device))
    with _LOCK:
        if key in _ALIKED_CACHE:
            return _ALIKED_CACHE[key]
    if not weights.is_file():
        raise CheckpointError(f"ALIKED weights not found (download {ALIKED_URL})", weights)
    state = load_state_dict(weights)
    from kornia.feature import ALIKED

    model = ALIKED(
        model_name="aliked-n16",
        max_num_keypoints=2048,
        detection_threshold=ALIKED_DETECTION_THRESHOLD,
        nms_radius=ALIKED_NMS_RADIUS,
    )
    own = model.state_dict()
    needed = [k for k in own if not (k.startswith("dkd.") or k.endswith("num_batches_tracked"))]
    missing = [k for k in needed if k not in state]
    if missing:
        raise CheckpointError(
            f"not an aliked-n16 checkpoint: {len(missing)} tensors missing (e.g. {missing[:3]})", weights
        )
    try:
        model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    except RuntimeError as e:
        raise CheckpointError(f"aliked-n16 tensors of the wrong shape ({short_reason(e)})", weights) from None
    model = model.eval().to(device)
    with _LOCK:
        _ALIKED_CACHE[key] = model
    return model


@torch.no_grad()
def _detect_aliked(
    image: torch.Tensor, max_points: int, invalid: Optional[torch.Tensor], device, weights: Optional[Path]
) -> torch.Tensor:
    model = load_aliked(weights, device)
    dev = next(model.parameters()).device
    x = image.detach().float().to(dev)[None].clamp(0, 1)
    _, score_map = model.extract_dense_map(x)
    if invalid is not None:
        score_map = score_map.masked_fill(invalid.to(dev)[None, None], 0.0)
    from kornia.feature.aliked.aliked import DKD

    # a fresh detection head per call: the cached network is shared, its settings are not
    dkd = DKD(radius=ALIKED_NMS_RADIUS, top_k=-1, scores_th=ALIKED_DETECTION_THRESHOLD, n_limit=int(max_points)).to(dev)
    keypoints = dkd(score_map)[0][0]  # (N, 2) in [-1, 1], align_corners=True
    H, W = image.shape[-2:]
    wh = torch.tensor([W - 1, H - 1], dtype=torch.float32, device=keypoints.device)
    return ((keypoints.float() + 1.0) * 0.5 * wh).cpu()


# --------------------------------------------------------------------------------------------
# Grid and Shi-Tomasi
# --------------------------------------------------------------------------------------------


def grid_points(width: int, height: int, num: int) -> torch.Tensor:
    """About ``num`` points on a regular grid covering a ``width x height`` frame.

    The spacing ``s = sqrt(W H / num)`` is the same on both axes; points sit at the centres of the
    ``s x s`` cells (pixel-centre convention).

    Returns:
        ``(M, 2)`` float32, ``M <= num`` (rounding), ``(x, y)``.
    """
    num = max(1, int(num))
    step = math.sqrt(width * height / num)
    nx = max(1, int(width / step))
    ny = max(1, int(height / step))
    while nx * ny > num:
        if nx >= ny and nx > 1:
            nx -= 1
        elif ny > 1:
            ny -= 1
        else:
            break
    xs = (torch.arange(nx, dtype=torch.float32) + 0.5) * (width / nx) - 0.5
    ys = (torch.arange(ny, dtype=torch.float32) + 0.5) * (height / ny) - 0.5
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)


def _detect_gftt(gray: np.ndarray, max_points: int, invalid: Optional[np.ndarray]) -> torch.Tensor:
    import cv2

    H, W = gray.shape
    min_dist = max(3.0, 0.5 * math.sqrt(H * W / max(1, max_points)))
    mask = None if invalid is None else np.ascontiguousarray((~invalid).astype(np.uint8) * 255)
    pts = cv2.goodFeaturesToTrack(gray, maxCorners=int(max_points), qualityLevel=0.001, minDistance=min_dist, mask=mask, blockSize=7)
    if pts is None:
        return torch.zeros((0, 2), dtype=torch.float32)
    return torch.from_numpy(pts.reshape(-1, 2).astype(np.float32))  # integer pixel centres


# --------------------------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------------------------


def spread_subset(points: torch.Tensor, width: int, height: int, num: int, seed: int = 0, cells: int = 8) -> torch.Tensor:
    """Keep ``num`` of ``points``, a random subset stratified over a ``cells x cells`` grid.

    Points are shuffled (seeded), then taken round-robin over the grid cells: first one point of
    every non-empty cell, then a second, and so on. Within a cell the choice is random, like the
    official ``randperm`` subset; across cells, sparse regions keep their points.

    Args:
        points: ``(N, 2)`` float pixel-centre ``(x, y)``.
        width, height: frame size in pixels.
        num: how many to keep (all if ``N <= num``).
        seed: seed of the shuffle.
        cells: grid resolution.

    Returns:
        ``(min(N, num), 2)`` subset of ``points`` (same dtype/device).
    """
    N = int(points.shape[0])
    if N <= num:
        return points
    gen = torch.Generator().manual_seed(int(seed))
    perm = torch.randperm(N, generator=gen)
    p = points[perm].detach().cpu().float()
    cx = (p[:, 0] * cells / max(width, 1)).floor().clamp(0, cells - 1).long()
    cy = (p[:, 1] * cells / max(height, 1)).floor().clamp(0, cells - 1).long()
    cell = cy * cells + cx
    # rank of each point within its cell (stable order of the shuffle)
    order = torch.argsort(cell, stable=True)
    sorted_cell = cell[order]
    first = torch.ones_like(sorted_cell, dtype=torch.bool)
    first[1:] = sorted_cell[1:] != sorted_cell[:-1]
    idx = torch.arange(N)
    start = torch.cummax(torch.where(first, idx, torch.zeros_like(idx)), 0).values
    rank = torch.empty(N, dtype=torch.long)
    rank[order] = idx - start
    keep = torch.argsort(rank * N + torch.arange(N), stable=True)[:num]
    return points[perm[keep.to(perm.device)].to(points.device)]


def detect_query_points(
    image: torch.Tensor,
    method: str,
    max_points: int,
    invalid_mask: Optional[torch.Tensor] = None,
    device=None,
    aliked_weights: Optional[Path] = None,
    seed: int = 0,
    sift_backend: str = "opencv",
) -> torch.Tensor:
    """Query points of one frame.

    Args:
        image: ``(3, H, W)`` float RGB in [0, 1], the processed frame.
        method: detectors joined with ``+``, from :data:`QUERY_POINT_METHODS`
            (``"aliked"``, ``"sift"``, ``"grid"``, ``"gftt"``); each detects up to ``max_points``.
        max_points: maximum number of points returned (official ``max_query_pts``, 2048).
        invalid_mask: ``(H, W)`` bool, True where no point may lie (dynamic objects, padding).
        device: device of the ALIKED network (default: ``image.device``).
        aliked_weights: local ``aliked-n16.pth``; None resolves :data:`ALIKED_URL` via the cache.
        seed: seed of the random subset taken when there are too many points.
        sift_backend: ``"opencv"`` (official LightGlue-wrapper backend) or ``"pycolmap"``.

    Returns:
        ``(N, 2)`` float32 on ``image.device``, ``N <= max_points``, pixel-centre ``(x, y)`` in
        processed-frame pixels, none inside ``invalid_mask`` or outside the frame.

    Source: official ``get_query_points`` (spec §4.2); ``grid`` and ``gftt`` are ours (KLT seeds).

    Raises:
        ValueError: on an unknown method, a bad image or a mask of another size.
        CheckpointError: when ``aliked`` weights cannot be found.
    """
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"detect_query_points expects a (3, H, W) image, got {tuple(image.shape)}")
    if max_points < 1:
        raise ValueError(f"max_points must be positive, got {max_points}")
    H, W = int(image.shape[1]), int(image.shape[2])
    invalid = None
    if invalid_mask is not None:
        invalid = torch.as_tensor(invalid_mask).bool().cpu()
        if invalid.ndim == 3:
            invalid = invalid[0]
        if tuple(invalid.shape) != (H, W):
            raise ValueError(f"invalid_mask is {tuple(invalid.shape)} but the image is {(H, W)}")
    methods = [m.strip() for m in method.split("+") if m.strip()]
    if not methods:
        raise ValueError("empty query method")
    unknown = unknown_query_methods(method)
    if unknown:
        raise ValueError(f"unknown query method {unknown[0]!r}; choose from {QUERY_POINT_METHODS} joined with '+'")
    gray = None
    found = []
    for m in methods:
        m = QUERY_POINT_ALIASES.get(m, m)
        if m == "aliked":
            pts = _detect_aliked(image, max_points, invalid, device if device is not None else image.device, aliked_weights)
        elif m == "sift":
            gray = to_gray_uint8(image) if gray is None else gray
            xy, _, _ = extract_sift(gray, max_features=max_points, backend=sift_backend)
            pts = torch.unique(torch.from_numpy(xy), dim=0)  # one point per repeated orientation
        elif m == "grid":
            pts = grid_points(W, H, max_points)
        elif m == "gftt":
            gray = to_gray_uint8(image) if gray is None else gray
            pts = _detect_gftt(gray, max_points, None if invalid is None else invalid.numpy())
        else:  # pragma: no cover - a name in QUERY_POINT_METHODS without a detector here
            raise ValueError(f"query method {m!r} has no detector")
        found.append(pts.float().reshape(-1, 2).cpu())
    pts = torch.cat(found, 0)
    inside = (pts[:, 0] >= -0.5) & (pts[:, 0] <= W - 0.5) & (pts[:, 1] >= -0.5) & (pts[:, 1] <= H - 0.5)
    pts = pts[inside]
    if invalid is not None and pts.shape[0]:
        ix = pts[:, 0].round().long().clamp(0, W - 1)
        iy = pts[:, 1].round().long().clamp(0, H - 1)
        pts = pts[~invalid[iy, ix]]
    pts = spread_subset(pts, W, H, int(max_points), seed=seed)
    return pts.contiguous().to(image.device)
