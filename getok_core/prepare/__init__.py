"""``getok prepare``: annotations -> GETok training data. Settings (``config``), the per-image
work (``worker``), mask proposals per grid point (``proposals``), the local engine and the
outputs (``engine``), the Ray Data engine (``ray_engine``)."""

from .config import FORMATS, PrepareConfig
from .engine import prepare

__all__ = ["FORMATS", "PrepareConfig", "prepare"]
