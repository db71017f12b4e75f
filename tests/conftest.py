"""Shared test settings: hypothesis profiles (CI is deterministic: derandomized, no deadline)."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, database=None, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("GETOK_HYPOTHESIS_PROFILE", "ci"))


def pytest_collection_modifyitems(config, items):
    """``GETOK_HYPOTHESIS_SCALE=F`` scales every property test's ``max_examples`` by F (at least
    20): scripts/test.sh runs tests/core in several environments with the same derandomized examples,
    so the later runs need only a share of them to check the other library versions."""
    scale = float(os.environ.get("GETOK_HYPOTHESIS_SCALE", "1"))
    if scale == 1:
        return
    for item in items:
        fn = getattr(item, "obj", None)
        current = getattr(fn, "_hypothesis_internal_use_settings", None)
        if current is not None:
            fn._hypothesis_internal_use_settings = settings(current, max_examples=max(20, int(current.max_examples * scale)))
