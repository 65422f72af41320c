"""Hypothesis settings for the property tests.

The ``ci`` profile (the default) keeps example counts small and turns the deadline off, so
the whole directory runs in seconds on a loaded 2-core machine without timing flakiness;
``HYPOTHESIS_PROFILE=thorough`` runs many more examples. Examples are not saved to disk.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# The ``storage`` fixture is function-scoped and shared by every example of a test: each
# example queues its own job, so sharing is what the test means.
_SHARED = dict(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile("ci", max_examples=60, **_SHARED)  # type: ignore[arg-type]
settings.register_profile("thorough", max_examples=2000, **_SHARED)  # type: ignore[arg-type]
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
