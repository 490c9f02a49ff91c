"""PoseAug data sources; every loader returns a :class:`PoseSet`."""
from .poseset import PoseSet

__all__ = ["PoseSet"]
