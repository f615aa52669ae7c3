"""Agent step holds: hold / actual of each ``agent_step`` reservation over a few real agent runs.

    .venv/bin/python -m benchmarks.agent_holds [--tasks 4] [--json out/agent_holds.json]

The agents of ``benchmarks.cost_truth`` (same setup: PostgreSQL, in-process tasks, the built-in
math tools): one on the local SmolLM2 and one on the fake OpenAI-compatible endpoint that reports
up to 2x the prompt tokens, ``step_limit`` 2, ``top_k`` 3, ``max_depth`` 0, 12 output tokens, on
the first ``--tasks`` math tasks below; then each settled ``agent_step`` reservation's estimate /
actual, and its rows by stage. A few minutes on two CPU cores (the cost_truth run is longer).
DATABASE_URL and PARSIMONY_TEST_MODEL_CACHE as in ``benchmarks.cost_truth``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.common import write_json
from benchmarks.metering import _percentile

TASKS = [
    "What is the area of a circle of radius 3?",
    "What is the greatest common divisor of 84 and 36?",
    "What is the area of a rectangle 8 m by 5 m?",
    "What is the square root of 144?",
    "What is 17 multiplied by 23?",
    "Convert 180 degrees to radians.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from benchmarks import cost_truth

    tmp = Path(tempfile.mkdtemp(prefix="agent-holds-"))
    cost_truth._setup(tmp)
    from django.db.models import Sum
    from django.utils import timezone

    from apps.agents.models import AgentRun
    from apps.agents.services.agents import agent_save
    from apps.agents.services.runs import agent_run_execute, agent_run_start
    from apps.agents.services.tools import builtin_tools_load, tool_index_rebuild
    from apps.costs.models import Reservation, ReservationStatus, UsageRecord

    run = cost_truth.Run(tag=uuid.uuid4().hex[:8], started_at=timezone.now())
    cost_truth.step_setup(run, argparse.Namespace(passages=1, first_question=0))
    builtin_tools_load(packs=["math"])
    tool_index_rebuild(team=run.team)
    runs = []
    t0 = time.perf_counter()
    try:
        for label, endpoint in (("local", cost_truth.LOCAL_MODEL), ("remote", run.remotes["remote-over"])):
            agent = agent_save(team=run.team, name=f"agent-{label}-{run.tag}", model_endpoint=endpoint, top_k=3,
                               max_depth=0, step_limit=2, max_output_tokens=cost_truth.MAX_OUT)
            for task in TASKS[: args.tasks]:
                started = agent_run_start(team=run.team, agent=agent, request=task, user=run.user)
                if not AgentRun.objects.get(pk=started.pk).is_finished:
                    agent_run_execute(agent_run_id=started.pk)
                runs.append((label, AgentRun.objects.get(pk=started.pk)))
    finally:
        for server in run.servers:
            server.__exit__(None, None, None)
    elapsed = time.perf_counter() - t0

    holds = []
    for label, agent_run in runs:
        ids = UsageRecord.objects.filter(agent_run_id=agent_run.pk).values("reservation_id")
        for hold in Reservation.objects.filter(pk__in=ids, status=ReservationStatus.SETTLED, actual__gt=0):
            stages = dict(
                UsageRecord.objects.filter(reservation=hold).values_list("stage").annotate(total=Sum("cost"))
            )
            holds.append({
                "endpoint": label, "run": agent_run.pk, "status": agent_run.status,
                "finish_reason": agent_run.finish_reason, "description": hold.description,
                "estimate": str(hold.estimate), "actual": str(hold.actual),
                "ratio": round(float(hold.estimate / hold.actual), 3),
                "rows": {stage: str(cost) for stage, cost in stages.items()},
            })
    report = {"runs": len(runs), "seconds": round(elapsed, 1), "holds": holds, "by_endpoint": {}}
    for label in ("local", "remote", None):
        ratios = [h["ratio"] for h in holds if label is None or h["endpoint"] == label]
        if ratios:
            report["by_endpoint"][label or "all"] = {
                "n": len(ratios), "p50": round(_percentile(ratios, 0.5), 2),
                "p95": round(_percentile(ratios, 0.95), 2), "max": round(max(ratios), 2),
            }
    for h in holds:
        print(f"{h['endpoint']:6} run {h['run']:>5} {h['finish_reason']:10} {h['description'][:40]:40} "
              f"hold/actual {h['ratio']:8.2f}  rows {h['rows']}")
    for label, stats in report["by_endpoint"].items():
        print(f"{label:6} n={stats['n']:3} p50={stats['p50']} p95={stats['p95']} max={stats['max']}")
    if args.json:
        write_json(args.json, report)


if __name__ == "__main__":
    main()
