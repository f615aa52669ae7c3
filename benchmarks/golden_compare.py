"""Diff two golden-output files (`benchmarks.golden_outputs`) or two per-question benchmark logs.

    .venv/bin/python -m benchmarks.golden_compare var/bench/golden-before.json var/bench/golden-after.json

Keys that hold timings or device-second costs (seconds, latency, wall, cost, ...) are dropped
before comparing: they differ run to run. Prints each difference with its path and exits 1 when
there is any, 0 when the outputs are identical.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

# Measured quantities, not outputs: wall and device seconds, and the costs priced from them.
VARYING_KEY = re.compile(
    r"(seconds|_s$|_ms$|latency|wall|elapsed|time|duration|cost|ttft|precompute|speed|per_s|throughput)", re.I
)


def without_measurements(value: Any) -> Any:
    """`value` with every dict key that names a timing or a cost removed, recursively."""
    if isinstance(value, dict):
        return {k: without_measurements(v) for k, v in value.items() if not VARYING_KEY.search(k)}
    if isinstance(value, list):
        return [without_measurements(v) for v in value]
    return value


def differences(before: Any, after: Any, path: str = "") -> list[str]:
    """Each place where `after` differs from `before`, as 'path: before != after'."""
    if type(before) is not type(after):
        return [f"{path}: {before!r:.100} != {after!r:.100}"]
    if isinstance(before, dict):
        out = []
        for key in sorted(set(before) | set(after)):
            if key not in before or key not in after:
                out.append(f"{path}.{key}: only {'after' if key not in before else 'before'}")
            else:
                out += differences(before[key], after[key], f"{path}.{key}")
        return out
    if isinstance(before, list):
        out = [f"{path}: {len(before)} items != {len(after)}"] if len(before) != len(after) else []
        for i, (x, y) in enumerate(zip(before, after, strict=False)):
            out += differences(x, y, f"{path}[{i}]")
        return out
    return [] if before == after else [f"{path}: {before!r:.100} != {after!r:.100}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    found = differences(without_measurements(json.loads(args.before.read_text())),
                        without_measurements(json.loads(args.after.read_text())))
    for line in found:
        print(line)
    print(json.dumps({"differences": len(found)}))
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
