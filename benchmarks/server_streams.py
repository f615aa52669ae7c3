"""Which production server streams without holding a worker per stream: sync gunicorn, gthread, ASGI.

    .venv/bin/python -m benchmarks.server_streams [--streams 24] [--workers 3] [--json out/server_streams.json]

(The ASGI configuration needs uvicorn, not a dependency of the project: `.venv/bin/pip install uvicorn`.)

Starts each server configuration on loopback (an embedded SQLite under a temporary folder, the
benchmark URLconf `benchmarks.serving.urls`: the project's URLs plus one endpoint that streams
`--events` server-sent events `--every` seconds apart through `apps.api.sse.sse_response`, the
response the streaming endpoints use, with no model work), opens `--streams` concurrent streams, and
while they run times plain `GET /healthz` requests. Reports per configuration: how many streams
delivered their first event within 1 s (they stream concurrently), the time to first event (p50 and
max), all streams' completion, and the time to first byte of the plain requests during the streams.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import ROOT, free_port, stop_process_group, wait_ready, write_json

BIN = Path(sys.executable).parent


def configurations(workers: int, threads: int) -> dict[str, list[str]]:
    gunicorn = [str(BIN / "gunicorn"), "--workers", str(workers), "--timeout", "150", "--log-level", "warning"]
    return {
        # Explicit worker classes and threads: the command line overrides the repository's gunicorn.conf.py
        # (and gunicorn turns sync workers with threads > 1 into gthread).
        "gunicorn sync": [*gunicorn, "--worker-class", "sync", "--threads", "1", "apps.config.wsgi:application"],
        f"gunicorn gthread ({threads} threads)": [
            *gunicorn, "--worker-class", "gthread", "--threads", str(threads), "apps.config.wsgi:application",
        ],
        "uvicorn (ASGI)": [
            str(BIN / "uvicorn"), "--workers", str(workers), "--log-level", "warning", "apps.config.asgi:application",
        ],
    }


def open_stream(port: int, query: str, started: float, out: dict, timeout_s: float) -> None:
    """One stream: the time its first event arrived and when it finished (seconds from `started`)."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
        conn.request("GET", f"/bench/stream/?{query}")
        response = conn.getresponse()
        first = response.read1(64)  # returns as soon as some bytes arrive
        if first.startswith(b"data:"):
            out["first_event_s"] = time.monotonic() - started
        response.read()
        out["done_s"] = time.monotonic() - started
    except OSError as exc:
        out["error"] = type(exc).__name__


def plain_ttfb(port: int, timeout_s: float) -> float | None:
    started = time.monotonic()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
        conn.request("GET", "/healthz")
        conn.getresponse().read(1)
        return time.monotonic() - started
    except OSError:
        return None


def measure(command: list[str], *, streams: int, events: int, every: float) -> dict:
    port = free_port()
    var = tempfile.mkdtemp(prefix="parsimony-serving-")
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "CELERY_BROKER_URL", "CACHE_URL"}}
    env.update(DJANGO_SETTINGS_MODULE="benchmarks.serving.settings", PARSIMONY_VAR_DIR=var, PYTHONWARNINGS="ignore")
    server = subprocess.Popen(
        [*command, "--bind" if "gunicorn" in command[0] else "--port", f"127.0.0.1:{port}"
         if "gunicorn" in command[0] else str(port)],
        cwd=ROOT, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        wait_ready(port)
        stream_s = events * every
        timeout_s = stream_s * streams + 30
        results: list[dict] = [{} for _ in range(streams)]
        started = time.monotonic()
        threads = [
            threading.Thread(target=open_stream, args=(port, f"events={events}&every={every}", started, out, timeout_s))
            for out in results
        ]
        for thread in threads:
            thread.start()
        time.sleep(min(1.0, stream_s / 4))
        ttfbs = []
        while time.monotonic() - started < stream_s * 0.75 and len(ttfbs) < 5:
            ttfbs.append(plain_ttfb(port, timeout_s))
            time.sleep(0.2)
        for thread in threads:
            thread.join()
        firsts = sorted(r["first_event_s"] for r in results if "first_event_s" in r)
        served = [t for t in ttfbs if t is not None]
        return {
            "streams": streams,
            "first_event_within_1s": sum(1 for t in firsts if t <= 1.0),
            "first_event_p50_s": round(statistics.median(firsts), 3) if firsts else None,
            "first_event_max_s": round(firsts[-1], 3) if firsts else None,
            "all_done_s": round(max((r.get("done_s", 0.0) for r in results), default=0.0), 2),
            "stream_errors": sum(1 for r in results if "error" in r),
            "plain_ttfb_during_streams_s": [round(t, 3) if t is not None else None for t in ttfbs],
            "plain_ttfb_max_s": round(max(served), 3) if served else None,
        }
    finally:
        stop_process_group(server, 15)
        shutil.rmtree(var, ignore_errors=True)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=24)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--events", type=int, default=8)
    parser.add_argument("--every", type=float, default=0.5)
    parser.add_argument("--only", default=None, help="run the configurations whose name contains this")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    report: dict = {"streams": args.streams, "workers": args.workers, "stream_s": args.events * args.every}
    for name, command in configurations(args.workers, args.threads).items():
        if args.only and args.only not in name:
            continue
        if not Path(command[0]).exists():  # uvicorn is only for this comparison: `pip install uvicorn`
            print(f"{name}: skipped, {command[0]} is not installed", flush=True)
            continue
        report[name] = measure(command, streams=args.streams, events=args.events, every=args.every)
        print(name, report[name], flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(args.json), report, newline=True)
    return report


if __name__ == "__main__":
    main()
