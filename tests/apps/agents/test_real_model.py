"""One run with the real SmolLM2 (slow): it completes and every call is on the ledger; right or wrong."""

import pytest

from apps.agents import services
from apps.agents.models import AgentRunStatus
from apps.costs.models import Stage, UsageRecord

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def test_a_real_smollm2_run_on_an_easy_math_task_completes_and_is_metered(
    team_a, builtin_tools, make_agent, model_cache_dir
):
    from workers.runtime.local_lm import load_causal_lm, set_torch_threads

    set_torch_threads(1)
    # Loaded once per process: the endpoint's own load (under DATA_ROOT) then finds this one.
    load_causal_lm("smollm2-135m-instruct", cache_dir=model_cache_dir, device="cpu")
    agent = make_agent(team_a, step_limit=4, max_output_tokens=64)
    run = services.agent_run_start(team=team_a, agent=agent, request="What is 12 multiplied by 7?")
    run.refresh_from_db()
    assert run.status == AgentRunStatus.SUCCEEDED, run.error
    assert run.answer
    assert 1 <= run.model_calls <= 4
    ledger = UsageRecord.objects.filter(agent_run_id=run.pk)
    steps = ledger.filter(stage=Stage.AGENT_STEP)
    assert steps.count() == run.model_calls
    assert all(row.prompt_tokens > 0 and row.completion_tokens > 0 and row.cpu_seconds > 0 for row in steps)
    assert ledger.filter(stage=Stage.TOOL).count() == len(run.tools_called)
    assert run.cost == sum(row.cost for row in ledger) > 0
    assert run.prompt_tokens == sum(row.prompt_tokens for row in steps)
