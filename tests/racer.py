"""A promoting process for the race tests: says it is ready (GO_FILE.ready-VERSION), waits for the
signal file, then runs the gate with the champion read slowed down (a wider window between
reading the champion and moving the alias).

python tests/racer.py NAME VERSION VALUE DELAY GO_FILE [READ_SECONDS]  ->  prints "promoted champion_version"
"""

import sys
import time
from pathlib import Path

from stfn import registry

name, version, value, delay, go = sys.argv[1], sys.argv[2], float(sys.argv[3]), float(sys.argv[4]), Path(sys.argv[5])
read_seconds = float(sys.argv[6]) if len(sys.argv) > 6 else 1.0
read = registry.version_metric


def reads_slowly(mv, metric):
    out = read(mv, metric)
    time.sleep(read_seconds)
    return out


registry.version_metric = reads_slowly
# warm up before the signal (imports and first connections take seconds on a loaded machine,
# longer than the racers' head start): the race is then between the gates, not the imports
import prefect.client.orchestration  # noqa: E402, F401
import prefect.concurrency.sync  # noqa: E402, F401

registry.champion(name)
go.with_name(f"{go.name}.ready-{version}").touch()  # the test waits for every racer's, then says go
while not go.exists():
    time.sleep(0.01)
time.sleep(delay)
d = registry.promote_if_better(name, version, "accuracy", value, 0.0)
print(d.promoted, d.champion_version)
