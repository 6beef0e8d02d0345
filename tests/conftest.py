import os

from hypothesis import HealthCheck, settings

# Timing is not what these tests check: no deadlines (CI machines are shared).
# The default profile is derandomised: every run (CI's included) draws the
# same examples, so a red run can be replayed and a green one stays green.
# HYPOTHESIS_PROFILE=explore draws new examples at each run, to hunt for bugs.
settings.register_profile(
    "explore",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile(
    "default", parent=settings.get_profile("explore"), derandomize=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
