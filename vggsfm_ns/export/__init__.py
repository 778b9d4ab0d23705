"""Dataset writers (nerfstudio ``transforms.json`` + COLMAP + PLY)."""

from .nerfstudio import APPLIED_TRANSFORM, export_nerfstudio

__all__ = ["APPLIED_TRANSFORM", "export_nerfstudio"]
