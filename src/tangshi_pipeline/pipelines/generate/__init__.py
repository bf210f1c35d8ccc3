"""The generate pipeline: poems from the latest (or a pinned) model."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
