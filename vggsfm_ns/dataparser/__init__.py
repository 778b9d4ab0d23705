"""The ``vggsfm`` nerfstudio dataparser (``ns-train splatfacto vggsfm --data scene/``).

pyproject registers :data:`vggsfm_dataparser` under the ``nerfstudio.dataparser_configs`` entry-point
group, name ``vggsfm``. Importing this package is cheap and does not need nerfstudio: the
specification and the parser classes are built on first attribute access (nerfstudio's plug-in
discovery does exactly that), and :func:`training_commands` is plain string work, so the processing
summary can call it on a machine without nerfstudio.
"""

from __future__ import annotations

import shlex
import sys
import types
from pathlib import Path
from typing import TYPE_CHECKING, List, Union

from vggsfm_ns._lazy import lazy_getattr

#: ``ns-train`` flag that turns on splatfacto's camera (pose) optimiser (nerfstudio 1.1.5:
#: ``SplatfactoModelConfig.camera_optimizer: CameraOptimizerConfig``, ``mode`` in off/SO3xR3/SE3).
POSE_REFINEMENT_FLAGS = ("--pipeline.model.camera-optimizer.mode", "SO3xR3")

_DESCRIPTION = "VGGSfM output folder (ns-process-data vggsfm): poses, masks, depth, seed points, quality flags"


def training_commands(output_dir: Union[str, Path]) -> List[str]:
    """The ``ns-train`` command lines to train splatfacto on a processed folder.

    Args:
        output_dir: the dataset folder written by ``ns-process-data vggsfm``.

    Returns:
        Two shell command lines: plain splatfacto with the ``vggsfm`` dataparser, and the
        pose-refinement preset (splatfacto's ``SO3xR3`` camera optimiser refines the VGGSfM poses
        during training). ``--data`` is given before the dataparser subcommand so that nerfstudio
        names the experiment after the folder (``outputs/<folder>/splatfacto/...``).
    """
    data = shlex.quote(str(output_dir))
    return [
        f"ns-train splatfacto --data {data} vggsfm",
        f"ns-train splatfacto --data {data} {' '.join(POSE_REFINEMENT_FLAGS)} vggsfm",
    ]


_LAZY = {
    name: "vggsfm_ns.dataparser.vggsfm_dataparser"
    for name in ("VGGSfMDataParserConfig", "VGGSfMDataParser", "DEFAULT_DEPTH_UNIT_SCALE_FACTOR")
}


def _build_spec():
    from nerfstudio.plugins.registry_dataparser import DataParserSpecification

    from .vggsfm_dataparser import VGGSfMDataParserConfig

    return DataParserSpecification(config=VGGSfMDataParserConfig(), description=_DESCRIPTION)


class _Package(types.ModuleType):
    """Module type of this package: ``vggsfm_dataparser`` is the specification, built on first access.

    The submodule ``vggsfm_dataparser.py`` has the same name as the exported specification. Python's
    import system stores a freshly imported submodule as an attribute of its package, which would
    replace the specification by the module; the setter below keeps the specification instead.
    Import the classes with ``from vggsfm_ns.dataparser.vggsfm_dataparser import ...`` or from this
    package.
    """

    @property
    def vggsfm_dataparser(self):
        spec = self.__dict__.get("_spec")
        if spec is None:
            spec = _build_spec()
            self.__dict__["_spec"] = spec
        return spec

    @vggsfm_dataparser.setter
    def vggsfm_dataparser(self, value) -> None:
        if isinstance(value, types.ModuleType):  # the import system registering the submodule
            return
        self.__dict__["_spec"] = value


__getattr__ = lazy_getattr(__name__, _LAZY)


sys.modules[__name__].__class__ = _Package

__all__ = ["vggsfm_dataparser", "training_commands", "POSE_REFINEMENT_FLAGS", *sorted(_LAZY)]

if TYPE_CHECKING:  # pragma: no cover
    from nerfstudio.plugins.registry_dataparser import DataParserSpecification

    from .vggsfm_dataparser import DEFAULT_DEPTH_UNIT_SCALE_FACTOR, VGGSfMDataParser, VGGSfMDataParserConfig

    vggsfm_dataparser: DataParserSpecification
