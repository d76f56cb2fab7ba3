"""The prompt cache's own cost per request, in-process: `fetch_nearest_cache` + `insert_cache` as mlx-lm's server calls them.

Demo llama (2 layers, 512 bytes of KV per token) and, with --large, the larger demo model; 64 conversations on one 2,048-token
system prompt, each request a 32-token turn and 4 generated tokens, caches prefilled by the model between the two calls (not timed).
kvspec's PoolPromptCache (64 MiB, 64-token blocks) beside mlx-lm's own LRUPromptCache (size 1000), in the same run, same requests.
Each call's time is taken alone (perf_counter around it); medians over the requests after the first 8.
Also, for kvspec, the parts of a fetch: hashing the prompt, and gathering its cached blocks into fresh caches, beside a plain copy
of the same bytes (what no gather can beat).

Run: .venv/bin/python bench/bench_cache_calls.py   (writes bench/results/cache_calls.json; about a minute)
"""
from __future__ import annotations

import json, os, platform, statistics, sys, tempfile, time
from importlib.metadata import version
from pathlib import Path

import mlx.core as mx
import mlx_lm
from mlx_lm.models.cache import LRUPromptCache, make_prompt_cache

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from kvspec.build import from_model  # noqa: E402
from kvspec.demo import demo_model  # noqa: E402
from kvspec.pool import TokenIds  # noqa: E402
from kvspec.promptcache import PoolPromptCache  # noqa: E402

OUT = ROOT / "bench" / "results" / "cache_calls.json"
SYSTEM_TOKENS, TURN_TOKENS, GENERATED, REQUESTS, SKIP = 2048, 32, 4, 64, 8


def run(model, cache, system):
    "Median seconds of fetch_nearest_cache and insert_cache per request, calling them as mlx-lm's server does."
    def prefill(tokens, caches=None):
        c = caches if caches is not None else make_prompt_cache(model)
        model(mx.array(tokens)[None], cache=c); mx.eval([x.state for x in c]); return c
    cache.insert_cache("m", system, prefill(system), cache_type="system")
    fetch, insert = [], []
    for i in range(REQUESTS):
        prompt = system + [(11 * i + j) % 300 + 3 for j in range(TURN_TOKENS)]
        t = time.perf_counter(); caches, rest = cache.fetch_nearest_cache("m", prompt); fetch.append(time.perf_counter() - t)
        caches = prefill(rest + [5] * GENERATED, caches)
        t = time.perf_counter(); cache.insert_cache("m", prompt + [5] * GENERATED, caches); insert.append(time.perf_counter() - t)
    return statistics.median(fetch[SKIP:]), statistics.median(insert[SKIP:])


def median_time(f, n=100):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def parts(pc: PoolPromptCache, system):
    "kvspec's fetch, in parts: hashing the prompt; gathering its cached blocks (evaluated); a plain copy of the same bytes."
    prompt = TokenIds(system + [7] * TURN_TOKENS)
    hashes = pc.pool.hashes(prompt)
    n, caches = pc.store.prefix_caches(TokenIds(prompt[:-1]), hashes=hashes)
    arrays = [a for c in caches for a in c.state if isinstance(a, mx.array)]
    return dict(hash_ms=1e3 * median_time(lambda: pc.pool.hashes(prompt)),
                gather_ms=1e3 * median_time(lambda: pc.store.prefix_caches(TokenIds(prompt[:-1]), hashes=hashes)),
                plain_copy_ms=1e3 * median_time(lambda: mx.eval([a + 0 for a in arrays])),
                gathered_nbytes=sum(a.nbytes for a in arrays))


def main(argv=None):
    large = "--large" in (argv or sys.argv[1:])
    tmp = Path(tempfile.mkdtemp())
    out = dict(machine=dict(platform=platform.platform(), processor=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                            python=platform.python_version(), mlx=version("mlx"), mlx_lm=version("mlx-lm")),
               when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), requests=REQUESTS, system_tokens=SYSTEM_TOKENS, models={})
    for name, kw in [("demo llama", {})] + ([("larger demo llama", dict(size="large"))] if large else []):
        model, _ = mlx_lm.load(str(demo_model(tmp / name.replace(" ", "-"), "llama", **kw)))
        system = [(7 * i) % 300 + 3 for i in range(SYSTEM_TOKENS)]
        pc = PoolPromptCache(from_model(model), 64 << 20, block_tokens=64)
        kf, ki = run(model, pc, system)
        sf, si = run(model, LRUPromptCache(max_size=1000), system)
        out["models"][name] = dict(kvspec=dict(fetch_ms=1e3 * kf, insert_ms=1e3 * ki, total_ms=1e3 * (kf + ki), **parts(pc, system)),
                                   stock=dict(fetch_ms=1e3 * sf, insert_ms=1e3 * si, total_ms=1e3 * (sf + si)))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__": main()
