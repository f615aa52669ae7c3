"""Merge the per-question results of several `benchmarks/compression.py` runs from their logs.

A long benchmark is often run in parts (`--offset/--limit`, in parallel) and some questions rerun
(`--only`); the JSON summaries cannot be merged exactly, but every run prints one stderr line per
question and method ("[summarize @0.2] 12/75 kept=0.19 retained=True 3.12s"). This reads those
lines, places each at its question's position in the dataset, lets `--only` runs replace what
the parts said for their questions, and prints per method and target: questions, token cut
(from the logged kept shares, rounded to 2 decimals per question), answer retention over the
questions whose full context holds the answer (the `none` rows), compression latency p50 and
the 0-based questions that lost the answer; with truncation's lines at the same target, the
questions won and lost against it and the exact sign test's p (benchmarks/paired.py).

    python -m benchmarks.compression_merge part-a.log:0 part-b.log:150:75 \
        --only rerun.log:2,8,19      # the rerun's questions, as given to --only

PART is LOG:OFFSET[:N]: the run's --offset, and its number of questions when the log also holds
another run's lines (a chained command writing to one file).
"""

from __future__ import annotations

import argparse
import re
import statistics
from collections import defaultdict
from collections.abc import Callable

from benchmarks.paired import paired_vs

LINE = re.compile(r"^\[(\S+) @([\d.]+)\] (\d+)/(\d+) kept=(\S+) retained=(True|False) (\S+)s")

Results = dict[tuple[str, str], dict[int, tuple[float, bool, float]]]


def read_log(path: str, position: Callable[[int], int], total: int | None, into: Results) -> None:
    """Add the log's per-question lines to `into`, the k-th question of the run at `position(k)`."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            match = LINE.match(line)
            if match and (total is None or int(match[4]) == total):
                key = (match[1], match[2])
                into[key][position(int(match[3]) - 1)] = (float(match[5]), match[6] == "True", float(match[7]))


def summary(results: Results) -> list[str]:
    has_answer = {q: r[1] for (method, _), rows in results.items() if method == "none" for q, r in rows.items()}
    lines = []
    for (method, target), rows in sorted(results.items()):
        if method == "none":
            continue
        pool = [q for q in rows if has_answer.get(q, True)]
        kept = sum(rows[q][1] for q in pool)
        cut = 1 - statistics.mean(r[0] for r in rows.values())
        p50 = statistics.median(r[2] for r in rows.values())
        missed = sorted(q for q in pool if not rows[q][1])
        paired = ""
        baseline = results.get(("truncation", target))
        if method != "truncation" and baseline:
            vs = paired_vs({q: baseline[q][1] for q in baseline if has_answer.get(q, True)},
                           {q: rows[q][1] for q in pool})
            paired = f" vs truncation +{vs['won']} -{vs['lost']} p={vs['p_two_sided']:.3f}"
        lines.append(f"{method} @{target}: n={len(rows)} cut={cut:.3f} retained {kept}/{len(pool)} "
                     f"= {100 * kept / max(len(pool), 1):.1f}% p50={p50:.2f}s{paired} missed={missed}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("parts", nargs="+", metavar="LOG:OFFSET[:N]")
    parser.add_argument("--only", nargs="+", default=[], metavar="LOG:I,J,K",
                        help="a --only run's log and its question numbers; replaces the parts' results")
    args = parser.parse_args()
    results: Results = defaultdict(dict)
    for part in args.parts:
        path, offset, *total = part.split(":")
        read_log(path, lambda k, offset=int(offset): k + offset, int(total[0]) if total else None, results)
    for rerun in args.only:
        path, numbers = rerun.rsplit(":", 1)
        chosen = sorted({int(n) for n in numbers.split(",")})  # --only runs them in this order
        read_log(path, lambda k, chosen=chosen: chosen[k], len(chosen), results)
    print("\n".join(summary(results)))


if __name__ == "__main__":
    main()
