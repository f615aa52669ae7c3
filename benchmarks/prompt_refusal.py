"""How fast an over-long prompt is refused: ``apps.costs.tokens.prompt_check`` on the local SmolLM2 endpoint.

    .venv/bin/python -m benchmarks.prompt_refusal [--json out/prompt_refusal.json]

Times the check (best of 3, after a first call that loads the tokenizer and measures its longest token)
for the issue's 1.2 MB ``"hello "*200000`` (refused from its bytes), a 600 kB prompt the byte bound cannot
rule out (tokenized, then refused), a 48 kB prompt that fits, and, for comparison, tokenizing the 1.2 MB
prompt. Seconds on two CPU cores; needs DATABASE_URL (a migrated database with the default models) and a
DATA_ROOT (its models/ folder: the converted SmolLM2, else the GGUF's tokenizer is read, ~10 s once).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from benchmarks.common import write_json

CASES = {"1.2 MB, refused from bytes": 200_000, "600 kB, tokenized and refused": 100_000, "48 kB, fits": 8_000}


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "apps.config.settings")
    import django

    django.setup()
    from apps.costs.models import ModelEndpoint
    from apps.costs.tokens import ContextLengthExceeded, endpoint_tokenizer, prompt_check, prompt_tokens_bound

    endpoint = ModelEndpoint.objects.get(name="smollm2-135m-instruct")
    started = time.perf_counter()
    endpoint_tokenizer(endpoint)
    report: dict = {"tokenizer_load_s": round(time.perf_counter() - started, 3), "cases": {}}
    for label, words in CASES.items():
        messages = [{"role": "user", "content": "hello " * words}]
        times, outcome = [], ""
        for _ in range(4):
            started = time.perf_counter()
            try:
                outcome = f"accepted: {prompt_check(endpoint, messages, max_output_tokens=1)} tokens"
            except ContextLengthExceeded as exc:
                outcome = exc.message
            times.append(time.perf_counter() - started)
        report["cases"][label] = {"first_s": round(times[0], 4), "best_s": round(min(times[1:]), 5),
                                  "outcome": outcome}
    messages = [{"role": "user", "content": "hello " * 200_000}]
    started = time.perf_counter()
    tokens = prompt_tokens_bound(endpoint, messages)
    report["tokenize_1_2_mb_s"] = round(time.perf_counter() - started, 3)
    report["tokenize_1_2_mb_tokens"] = tokens
    for label, case in report["cases"].items():
        print(f"{label}: first {case['first_s']} s, then {case['best_s']} s: {case['outcome'][:100]}")
    print(f"tokenizing the 1.2 MB prompt instead: {report['tokenize_1_2_mb_s']} s ({tokens} tokens)")
    if args.json:
        write_json(Path(args.json), report)
    return report


if __name__ == "__main__":
    main()
