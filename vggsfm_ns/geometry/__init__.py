"""Low-level multi-view geometry: pure functions over tensors with broadcast shapes.

Modules (import them directly; this package imports nothing heavy on its own):

* :mod:`vggsfm_ns.geometry.camera` -- camera models (SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL,
  OPENCV), distortion and its Newton inverse, ``cam_from_img`` / ``img_from_cam``, projection.
* :mod:`vggsfm_ns.geometry.epipolar` -- point normalisation, 7-point and (masked) 8-point
  fundamental matrices, Sampson error, LO-RANSAC fundamental estimation, essential matrices and their
  decomposition.
* :mod:`vggsfm_ns.geometry.triangulation` -- multi-view ray-distance triangulation, 2-view DLT,
  cheirality, triangulation angles, per-pair triangulation and the LO-RANSAC track triangulation.
* :mod:`vggsfm_ns.geometry.filtering` -- point and frame validity checks after bundle adjustment.
* :mod:`vggsfm_ns.geometry.chunking` -- chunk sizes for per-point work from free memory.
* :mod:`vggsfm_ns.geometry.pose_encoding` -- the camera predictor's pose encodings.

Conventions: extrinsics are OpenCV ``cam_from_world`` ``[..., 3, 4]``; pixel coordinates follow the
caller's convention (the geometry does not care whether (0, 0) is a pixel centre or corner as long as
the principal point uses the same one); "normalised" coordinates are ``K^-1`` applied to pixels and
then undistorted.
"""
