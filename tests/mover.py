"""Moves @champion N times through the registry's own calls (tests/integration/test_promotion_race.py):
promotions with reviewers' long reasons, a rollback every fourth move. Prints the moves made."""

import sys

from stfn import registry, tracking

name, n, versions = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
tracking.configure(".")  # MLFLOW_TRACKING_URI from the environment: the team's server
reason = (
    "approved after review: " + "the gate report, the slices and the calibration were read and found in order; " * 4
)
for i in range(n):
    if i % 4 == 3:
        registry.rollback(name)
    else:
        current = registry.champion(name)
        after = 0 if current is None else versions.index(str(current.version)) + 1
        registry.promote(name, versions[after % len(versions)], reason)
print(n)
