"""Raw corpus → clean, framed, vectorized poems."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
