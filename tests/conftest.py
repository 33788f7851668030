"""Hypothesis profiles: "ci" (derandomized, no deadline) when the CI variable is set, else "dev".

Select another with --hypothesis-profile=NAME. Example counts stay modest so that the whole
suite runs in about a minute on two cores; "thorough" is for a hand run before a release.
"""

import os

from hypothesis import HealthCheck, settings

_COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])

settings.register_profile("ci", derandomize=True, max_examples=40, print_blob=True, **_COMMON)
settings.register_profile("dev", max_examples=40, **_COMMON)
settings.register_profile("thorough", max_examples=1000, **_COMMON)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
