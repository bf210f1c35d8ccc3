"""Vectorized poems → trained poet (resumable), its held-out metrics and training curve."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
