"""Alias of benchmarks/tool_search.py (tool retrieval recall, prompt tokens saved, search latency, agent e2e).

    .venv/bin/python -m benchmarks.tool_retrieval --json out/tool_retrieval.json [--limit N] ...
"""

from __future__ import annotations

from benchmarks.tool_search import main

if __name__ == "__main__":
    raise SystemExit(main())
