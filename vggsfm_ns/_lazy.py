"""Lazy package attributes (PEP 562), so that importing a package stays cheap.

The ``ns-process-data`` hook imports :mod:`vggsfm_ns` at interpreter start-up, and nerfstudio imports
the dataparser entry point whenever it lists dataparsers; neither may pull in torch or pycolmap.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping


def lazy_getattr(package: str, attributes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` that imports ``attributes[name]`` (a module path) on first use.

    Args:
        package: the package's ``__name__`` (used in the error message).
        attributes: public name -> absolute module that defines it.

    Returns:
        ``__getattr__(name)``, raising ``AttributeError`` for names not in ``attributes``.
    """

    def __getattr__(name: str) -> Any:
        module = attributes.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return __getattr__
