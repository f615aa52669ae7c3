"""The agent task: one AgentRun on the `gpu` queue (model calls; tools run on threads beside it)."""

from __future__ import annotations

from apps.agents.services import agent_run_execute
from apps.core.models import Job
from workers.queues import Queue
from workers.tasks.base import Progress, job_task


@job_task(kind="agents.run", queue=Queue.GPU, soft_time_limit=1800, time_limit=1860)
def run_agent(job: Job, progress: Progress) -> dict:
    """Run the AgentRun named in the job's params."""
    run = agent_run_execute(agent_run_id=job.params["agent_run_id"], progress=progress)
    if run is None:
        return {"skipped": "agent run deleted"}
    return {"agent_run_id": run.pk, "status": run.status, "cost": str(run.cost), "model_calls": run.model_calls}
