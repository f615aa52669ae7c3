"""What the benchmark scripts share: the repository root, Django set-up, JSONL datasets, JSON results.

The benchmarks run as modules from the repository root, so the project's packages import without
touching sys.path: `.venv/bin/python -m benchmarks.<name> ...`. `make bench` (this module run as a
script) lists every benchmark with the commands its docstring documents.
"""

from __future__ import annotations

import ast
import gzip
import json
import os
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS_DIR = ROOT / "benchmarks"
SETTINGS_MODULE = "apps.config.settings"


def setup_django(*, migrate: bool = False) -> None:
    """django.setup() with the project's settings (unless DJANGO_SETTINGS_MODULE names others);
    `migrate`: bring the configured database up to date too. Set the environment first."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS_MODULE)
    import django

    django.setup()
    if migrate:
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a .jsonl (or .jsonl.gz) file, one a line (blank lines skipped)."""
    opener: Any = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def write_json(path: Path, data: Any, *, indent: int = 2, newline: bool = False, **dumps_options: Any) -> str:
    """Write `data` as JSON to `path` (with a final newline when `newline`); returns the text."""
    text = json.dumps(data, indent=indent, **dumps_options) + ("\n" if newline else "")
    path.write_text(text)
    return text


def free_port() -> int:
    """A TCP port free on loopback now (for a server a benchmark starts)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(port: int, timeout_s: float = 60.0) -> None:
    """Wait until the loopback server on ``port`` answers ``GET /healthz`` 200 (RuntimeError after ``timeout_s``)."""
    import http.client
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server on port {port} not ready after {timeout_s} s")


def stop_process_group(process: Any, timeout_s: float) -> None:
    """SIGTERM the process group a benchmark started (``start_new_session=True``), SIGKILL it after ``timeout_s``."""
    import signal
    import subprocess

    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def documented_commands() -> dict[str, list[str]]:
    """{benchmark: its docstring's command lines}, for every script in benchmarks/ that has some."""
    out: dict[str, list[str]] = {}
    for script in sorted(BENCHMARKS_DIR.glob("*.py")):
        doc = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
        commands: list[str] = []
        for line in doc.splitlines():
            if commands and commands[-1].endswith("\\"):
                commands[-1] += "\n    " + line.strip()
            elif line.strip().startswith((".venv/bin/python -m benchmarks.", "python -m benchmarks.")):
                # A "\" line end in a plain docstring joins the lines: squeeze the indent it leaves.
                commands.append(" ".join(line.split()))
        if commands:
            out[script.stem] = commands
    return out


def main() -> None:
    print("Benchmarks (run from the repository root; `make bench BENCH=<name> ARGS=\"...\"` runs one):")
    for name, commands in documented_commands().items():
        print(f"\n{name}:")
        for command in commands:
            print(f"  {command}")


if __name__ == "__main__":
    main()
