"""Deterministic pseudo-random weights for testing without the official checkpoint.

The golden vectors in ``tests/golden/vggsfm`` were produced by the official network code loaded
with weights generated from each ``state_dict`` key alone (``shared/golden/vggsfm/README.md``):

* generator seeded with the unsigned CRC32 of the UTF-8 key;
* ``*running_var``: ``rand + 0.5``; ``*running_mean``: ``randn * 0.1``; non-float: unchanged;
* 1-D ``*.weight`` whose module name starts with ``norm`` (LayerNorm / GroupNorm weights):
  ``1 + randn * 0.02``;
* everything else: ``randn * 0.02``.

Loading such a state dict into :class:`~vggsfm_ns.networks.VGGSfMModel` reproduces the golden
outputs; the pipeline smoke tests and the benchmark use it too.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Dict, Iterable, Mapping, Sequence, Tuple, Union

import torch

__all__ = ["deterministic_tensor", "deterministic_state_dict", "weight_rule"]


def weight_rule(key: str, shape: Sequence[int]) -> str:
    """The rule name applied to ``key``: ``"running_var"``, ``"running_mean"``, ``"norm_weight"`` or ``"randn"``."""
    if key.endswith("running_var"):
        return "running_var"
    if key.endswith("running_mean"):
        return "running_mean"
    parts = key.split(".")
    if len(shape) == 1 and parts[-1] == "weight" and len(parts) >= 2 and parts[-2].startswith("norm"):
        return "norm_weight"
    return "randn"


def deterministic_tensor(key: str, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The deterministic value of one ``state_dict`` entry (CPU tensor of ``shape``).

    Non-floating dtypes (``num_batches_tracked``) are returned as zeros ("unchanged" in the rule).
    """
    shape = tuple(int(s) for s in shape)
    if not dtype.is_floating_point:
        return torch.zeros(shape, dtype=dtype)
    g = torch.Generator().manual_seed(zlib.crc32(key.encode("utf-8")))
    rule = weight_rule(key, shape)
    if rule == "running_var":
        t = torch.rand(shape, generator=g) + 0.5
    elif rule == "running_mean":
        t = torch.randn(shape, generator=g) * 0.1
    elif rule == "norm_weight":
        t = 1 + torch.randn(shape, generator=g) * 0.02
    else:
        t = torch.randn(shape, generator=g) * 0.02
    return t.to(dtype)


_DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "int64": torch.int64}


def _entries(source) -> Iterable[Tuple[str, Tuple[int, ...], torch.dtype]]:
    if isinstance(source, (str, Path)):
        source = json.loads(Path(source).read_text())
    if isinstance(source, torch.nn.Module):
        source = source.state_dict()
    if isinstance(source, Mapping) and "entries" in source:
        source = source["entries"]
    if isinstance(source, Mapping):
        for k, v in source.items():
            yield k, tuple(v.shape), v.dtype
        return
    for e in source:
        yield e["key"], tuple(e["shape"]), _DTYPES[str(e.get("dtype", "float32")).replace("torch.", "")]


def deterministic_state_dict(source: Union[str, Path, Mapping, Sequence, torch.nn.Module]) -> Dict[str, torch.Tensor]:
    """Build the deterministic ``state_dict`` for a manifest or a model.

    Args:
        source: path to ``state_dict_manifest.json``, its parsed dict (``{"entries": [...]}``), the
            list of entries (``key``, ``shape``, ``dtype``), a ``state_dict`` mapping, or an
            ``nn.Module`` (its ``state_dict()`` keys and shapes are used).

    Returns:
        ``{key: tensor}`` in the source's order (CPU).
    """
    return {k: deterministic_tensor(k, shape, dtype) for k, shape, dtype in _entries(source)}
