"""`tracekit serve` throughput and latency: the bundled model behind the server on loopback,
1, 8 and 64 concurrent clients each sending greedy completions back to back; requests per
second and p50/p99 latency per level.

    python benchmarks/serve.py [--requests 256] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tracekit.format.tokenizer import decode, encode, load_tokenizer  # noqa: E402
from tracekit.model.checkpoint import BUNDLED, load_checkpoint  # noqa: E402
from tracekit.model.serve import Engine, make_server  # noqa: E402

PROMPT = "def f(items):\n    total = 0\n    for x in items:\n        total += x\n"


def ask(url: str, prompt: str, max_tokens: int) -> float:
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    request = urllib.request.Request(url, data=body,
                                     headers={"Content-Type": "application/json"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as response:
        response.read()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=256, help="Per concurrency level.")
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    model = load_checkpoint(BUNDLED, dtype=torch.float32)
    model.fast = True
    tokenizer = load_tokenizer(BUNDLED)
    engine = Engine(model, partial(encode, tokenizer), partial(decode, tokenizer), "bundled")
    httpd = make_server(engine, port=0)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1/completions"
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"bundled model, {args.max_tokens} new tokens per request")
    print("| clients | requests | requests/s | p50 ms | p99 ms |\n|---|---|---|---|---|")
    for clients in (1, 8, 64):
        prompts = [PROMPT + f"# {i}\n" for i in range(args.requests)]
        ask(url, prompts[0], args.max_tokens)  # warm
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            latencies = sorted(pool.map(lambda p: ask(url, p, args.max_tokens), prompts))
        seconds = time.perf_counter() - start
        p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
        print(f"| {clients} | {len(latencies)} | {len(latencies) / seconds:.1f} | "
              f"{statistics.median(latencies) * 1000:.0f} | {p99 * 1000:.0f} |")
    httpd.shutdown()


if __name__ == "__main__":
    main()
