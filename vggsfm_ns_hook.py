"""Post-import hook adding ``vggsfm`` to nerfstudio's ``ns-process-data``.

nerfstudio 1.1.5 has no plug-in mechanism for process-data converters: ``scripts/process_data.py``
builds a ``Commands`` union of its own converters and ``entrypoint()`` runs ``tyro.cli(Commands)``.
The wheel ships ``vggsfm_ns_process_data.pth`` and a copy of this file as the top-level module
``vggsfm_ns_hook`` in site-packages; at interpreter start the ``.pth`` imports ``vggsfm_ns_hook``
(not the ``vggsfm_ns`` package, so a source checkout on ``sys.path`` is never shadowed) and calls
:func:`install`, which only appends a tiny meta-path finder (no other imports). When
``nerfstudio.scripts.process_data`` is later imported, the finder lets the normal loader run the
module and then extends its ``Commands`` with
``Annotated[VGGSfMToNerfstudioDataset, tyro.conf.subcommand(name="vggsfm")]``.

Safety: nothing happens for any other module; if nerfstudio's layout changes (no ``Commands`` union)
the module is left untouched; set ``VGGSFM_NS_NO_HOOK=1`` to disable the hook entirely. The
``vggsfm-ns process`` command does not depend on it.
"""

from __future__ import annotations

import os
import sys

#: The module whose ``Commands`` union is extended.
TARGET = "nerfstudio.scripts.process_data"
#: Subcommand name under ``ns-process-data``.
SUBCOMMAND = "vggsfm"


def extend_commands(module) -> bool:
    """Add the ``vggsfm`` subcommand to ``module.Commands`` (nerfstudio's process-data module).

    Returns:
        True when the subcommand was added (or already present), False when the module does not
        have the expected layout (then it is left untouched).
    """
    import typing

    commands = getattr(module, "Commands", None)
    if commands is None or typing.get_origin(commands) is not typing.Union:
        return False
    for arg in typing.get_args(commands):
        if getattr(arg, "__metadata__", None) and any(getattr(m, "name", None) == SUBCOMMAND for m in arg.__metadata__):
            return True
    import tyro

    from vggsfm_ns.process.converter import VGGSfMToNerfstudioDataset

    module.Commands = typing.Union[  # type: ignore[attr-defined]
        commands,
        typing.Annotated[
            VGGSfMToNerfstudioDataset,
            tyro.conf.subcommand(
                name=SUBCOMMAND,
                description="VGGSfM v2 structure from motion (vggsfm-ns plug-in): video or images -> nerfstudio dataset.",
            ),
        ],
    ]
    return True


class _PatchingLoader:
    """Wraps the real loader of :data:`TARGET`; runs it, then :func:`extend_commands`."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            extend_commands(module)
        except Exception as e:  # noqa: BLE001 - never break nerfstudio's own commands
            if os.environ.get("VGGSFM_NS_DEBUG"):
                raise
            sys.stderr.write(f"vggsfm-ns: could not add 'ns-process-data vggsfm' ({type(e).__name__}: {e}); use 'vggsfm-ns process'\n")

    def __getattr__(self, name):
        return getattr(self._loader, name)


class ProcessDataFinder:
    """Meta-path finder that only reacts to :data:`TARGET` (see module docstring)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or isinstance(finder, ProcessDataFinder):
                continue
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        spec.loader = _PatchingLoader(spec.loader)
        return spec

    def invalidate_caches(self):
        pass


def install() -> bool:
    """Install the finder once (idempotent). If nerfstudio's module is already imported, extend it now.

    Returns:
        True when the hook is active.
    """
    if os.environ.get("VGGSFM_NS_NO_HOOK"):
        return False
    if not any(isinstance(f, ProcessDataFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, ProcessDataFinder())
    mod = sys.modules.get(TARGET)
    if mod is not None:
        try:
            extend_commands(mod)
        except Exception:  # noqa: BLE001
            return False
    return True
