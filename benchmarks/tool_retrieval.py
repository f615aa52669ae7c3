"""Alias of benchmarks/tool_search.py (tool retrieval recall, prompt tokens saved, search latency, agent e2e).

    .venv/bin/python benchmarks/tool_retrieval.py --json out/tool_retrieval.json [--limit N] ...
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.tool_search import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
