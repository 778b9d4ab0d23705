"""Structure from motion on tracks: preliminary two-view geometry, triangulation, bundle adjustment.

Entry points (import the modules directly; this package imports nothing heavy on its own):

* :func:`vggsfm_ns.sfm.backend.reconstruct_from_tracks` -- ``TrackSet`` -> ``SfMResult``;
* :func:`vggsfm_ns.sfm.extra_points.triangulate_extra_points` -- more points with fixed cameras;
* :func:`vggsfm_ns.sfm.intrinsics.known_intrinsics` -- EXIF / file intrinsics;
* :func:`vggsfm_ns.sfm.synthetic.make_scene` -- synthetic scenes with ground truth for tests.
"""
