"""llama.cpp side of benchmarks/inference.py: run by the benchmark's own venv (var/bench-llamacpp, see
benchmarks/requirements-llamacpp.txt), never imported by the project. Reads JSON lines on stdin, one job a line
({"prompt": [token ids], "n": tokens to generate}), answers one JSON line each on stdout: prefill seconds,
decode seconds and the greedy token ids (argmax of the logits, no sampler), so the timing is llama.cpp's own
forward passes and nothing else. argv: GGUF path, threads, context size."""

import json
import sys
import time

import llama_cpp
import numpy as np
from llama_cpp import Llama


def main() -> None:
    path, threads, n_ctx = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    llm = Llama(model_path=path, n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, n_batch=512,
                logits_all=False, verbose=False)
    vocab = llm.n_vocab()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        llm.reset()
        t0, c0 = time.perf_counter(), time.thread_time()
        llm.eval(job["prompt"])
        t1, c1 = time.perf_counter(), time.thread_time()
        tokens: list[int] = []
        while True:
            # The last position's logits from llama.cpp itself: llama-cpp-python's `scores` is only filled with
            # logits_all=True (0.3.x), and reading it otherwise gave rows of zeros (token 0 every time).
            last = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
            tokens.append(int(np.argmax(np.ctypeslib.as_array(last, shape=(vocab,)))))
            if len(tokens) >= job["n"]:
                break
            llm.eval([tokens[-1]])
        t2, c2 = time.perf_counter(), time.thread_time()
        # CPU seconds of this thread: with n_threads=1 llama.cpp computes on the calling thread.
        print(json.dumps({"prefill_s": t1 - t0, "decode_s": t2 - t1, "prefill_cpu_s": c1 - c0,
                          "decode_cpu_s": c2 - c1, "tokens": tokens}), flush=True)


if __name__ == "__main__":
    main()
