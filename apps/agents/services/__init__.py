"""Writes for the agent domain, one module per concern; the public names are re-exported here.

- ``tools``: the tool library (validate, create, change, delete, rebuild the indexes, the http
  allow-list, the built-in packs);
- ``tool_calls``: a Tool row as a plain callable for the engine's agent loop;
- ``agents``: agent definitions;
- ``runs``: reserving, starting, executing and waiting for agent runs.
"""

from apps.agents.services.agents import AGENT_FIELDS, agent_delete, agent_save, agent_validate
from apps.agents.services.runs import (
    agent_run_execute,
    agent_run_start,
    agent_run_wait,
    agent_run_worst_case,
)
from apps.agents.services.tool_calls import tool_callable
from apps.agents.services.tools import (
    TOOL_FIELDS,
    TOOL_PRICE_NAME,
    builtin_tools_load,
    http_host_allow,
    tool_create,
    tool_delete,
    tool_index_bound,
    tool_index_rebuild,
    tool_search_billed,
    tool_search_bound,
    tool_update,
    tool_validate,
    tools_index_bound,
)

__all__ = [
    "AGENT_FIELDS",
    "TOOL_FIELDS",
    "TOOL_PRICE_NAME",
    "agent_delete",
    "agent_run_execute",
    "agent_run_start",
    "agent_run_wait",
    "agent_run_worst_case",
    "agent_save",
    "agent_validate",
    "builtin_tools_load",
    "http_host_allow",
    "tool_callable",
    "tool_create",
    "tool_delete",
    "tool_index_bound",
    "tool_index_rebuild",
    "tool_search_billed",
    "tool_search_bound",
    "tool_update",
    "tool_validate",
    "tools_index_bound",
]
