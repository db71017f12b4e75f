"""GRPO rewards: grid answers (stage 1) and refinement answers (stage 2), and the refinement
dialogue (``dialogue``). Framework adapters (EasyR1, verl, ms-swift) call these."""

from .core import *  # noqa: F401,F403
from .core import __all__ as _core_all

__all__ = list(_core_all)
