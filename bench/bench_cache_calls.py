"""The prompt cache's own cost per request, in-process: `fetch_nearest_cache` + `insert_cache` as mlx-lm's server calls them.

Demo llama (2 layers, 512 bytes of KV per token) and, with --large, the larger demo model (`kvspec demo-model --size large`:
12 layers at hidden 768, 24 KiB of KV per token); 64 conversations (the larger model: 24, its forward passes take seconds
here) on one 2,048-token system prompt, each request a 32-token turn and 4 generated tokens, caches prefilled by the model
between the two calls (not timed; the system prompt once per model, a copy given to each cache).
kvspec's PoolPromptCache (64 MiB, 64-token blocks) beside mlx-lm's own LRUPromptCache (size 1000), in the same run, same requests.
The model's forward pass over each request's new tokens between the two calls is timed too (`prefill_ms`, the compute a
request's time to first token cannot avoid), so the calls' cost can be read as a share of it. Each call's time is taken alone (perf_counter around it); medians over the requests after the first 8 (the larger model: 4).
Also, for kvspec, the parts of a fetch: hashing the prompt, and gathering its cached blocks into fresh caches, beside a plain copy
of the same bytes (what no gather can beat), and writing one block into each of the pool's arrays (an insert's least work);
and what kvspec serve's handler adds before a request reaches mlx-lm: counting its prompt's tokens for the memory governor
(`admission_ms`, the chat template applied and tokenized; mlx-lm tokenizes the prompt again on its own thread); and kvspec's
calls again with a --cache-dir (`kvspec_cache_dir`: an insert also snapshots the prompt's blocks, on the calling thread, for the
disk writer's thread).

Run: .venv/bin/python bench/bench_cache_calls.py [--large]   (writes bench/results/cache_calls.json; about a minute,
     --large about 6 more on 2 cores)
"""
from __future__ import annotations

import copy, json, os, platform, statistics, sys, tempfile, time
from types import SimpleNamespace
from importlib.metadata import version
from pathlib import Path

import mlx.core as mx
import mlx_lm
from mlx_lm.models.cache import LRUPromptCache, make_prompt_cache

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from kvspec.build import from_model  # noqa: E402
from kvspec.admission import prompt_token_count  # noqa: E402
from kvspec.demo import DEMO_TEXT, demo_model  # noqa: E402
from kvspec.pool import TokenIds  # noqa: E402
from kvspec.promptcache import PoolPromptCache  # noqa: E402

OUT = ROOT / "bench" / "results" / "cache_calls.json"
SYSTEM_TOKENS, TURN_TOKENS, GENERATED = 2048, 32, 4
REQUESTS = {"demo llama": (64, 8), "larger demo llama": (24, 4)}   # model: requests, of which the first are not counted


def prefill(model, tokens, caches=None):
    "Run the model over `tokens` into `caches` (new ones if None), evaluated."
    c = caches if caches is not None else make_prompt_cache(model)
    model(mx.array(tokens)[None], cache=c); mx.eval([x.state for x in c]); return c


def run(model, cache, system, system_caches, requests, skip):
    "Median seconds of fetch_nearest_cache, the model's prefill between them, and insert_cache per request, called as mlx-lm's server does."
    cache.insert_cache("m", system, copy.deepcopy(system_caches), cache_type="system")
    fetch, compute, insert = [], [], []
    for i in range(requests):
        prompt = system + [(11 * i + j) % 300 + 3 for j in range(TURN_TOKENS)]
        t = time.perf_counter(); caches, rest = cache.fetch_nearest_cache("m", prompt); fetch.append(time.perf_counter() - t)
        t = time.perf_counter(); caches = prefill(model, rest + [5] * GENERATED, caches); compute.append(time.perf_counter() - t)
        t = time.perf_counter(); cache.insert_cache("m", prompt + [5] * GENERATED, caches); insert.append(time.perf_counter() - t)
    return tuple(statistics.median(x[skip:]) for x in (fetch, compute, insert))


def median_time(f, n=100):
    ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def parts(pc: PoolPromptCache, system):
    "kvspec's calls, in parts: hashing the prompt; gathering its cached blocks (evaluated); a plain copy of the same bytes; writing one block into the pool."
    prompt = TokenIds(system + [7] * TURN_TOKENS)
    hashes = pc.pool.hashes(prompt)
    n, caches = pc.store.prefix_caches(TokenIds(prompt[:-1]), hashes=hashes)
    arrays = [a for c in caches for a in c.state if isinstance(a, mx.array)]
    idx = mx.array([0], dtype=mx.int32)          # one block written back into every pool array, as an insert writes its new blocks
    block = {(i, j): mx.array(a[idx]) for i, arrs in pc.store.arrays.items() for j, a in enumerate(arrs) if isinstance(a, mx.array)}
    mx.eval(list(block.values()))
    def write_block():
        for (i, j), v in block.items(): pc.store.arrays[i][j][idx] = v
        mx.eval([pc.store.arrays[i][j] for i, j in block])
    return dict(hash_ms=1e3 * median_time(lambda: pc.pool.hashes(prompt)),
                write_block_ms=1e3 * median_time(write_block),
                gather_ms=1e3 * median_time(lambda: pc.store.prefix_caches(TokenIds(prompt[:-1]), hashes=hashes)),
                plain_copy_ms=1e3 * median_time(lambda: mx.eval([a + 0 for a in arrays])),
                gathered_nbytes=sum(a.nbytes for a in arrays))


def admission_ms(tokenizer) -> float:
    "Median ms kvspec serve's handler spends counting a chat request's prompt tokens before admitting it (a 2,048-token system prompt and a turn)."
    system = tokenizer.decode(tokenizer.encode(" ".join(DEMO_TEXT * (SYSTEM_TOKENS // 8)))[:SYSTEM_TOKENS])
    request = SimpleNamespace(request_type="chat", tools=None,   # what mlx-lm's handler hands to handle_completion, as far as counting reads it
                              messages=[{"role": "system", "content": system}, {"role": "user", "content": " ".join(DEMO_TEXT[:2])}])
    return 1e3 * median_time(lambda: prompt_token_count(tokenizer, request), 50)


def main(argv=None):
    large = "--large" in (argv or sys.argv[1:])
    tmp = Path(tempfile.mkdtemp())
    out = dict(machine=dict(platform=platform.platform(), processor=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                            python=platform.python_version(), mlx=version("mlx"), mlx_lm=version("mlx-lm")),
               when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), system_tokens=SYSTEM_TOKENS, turn_tokens=TURN_TOKENS,
               generated=GENERATED, models={})
    for name, kw in [("demo llama", {})] + ([("larger demo llama", dict(size="large"))] if large else []):
        model, tokenizer = mlx_lm.load(str(demo_model(tmp / name.replace(" ", "-"), "llama", **kw)))
        system = [(7 * i) % 300 + 3 for i in range(SYSTEM_TOKENS)]
        t = time.perf_counter(); system_caches = prefill(model, system); system_s = time.perf_counter() - t
        requests, skip = REQUESTS[name]
        spec = from_model(model)
        pc = PoolPromptCache(spec, max(64 << 20, 8 * SYSTEM_TOKENS * spec.nbytes([1]) // 256), block_tokens=64)
        kf, kc, ki = run(model, pc, system, system_caches, requests, skip)
        sf, sc, si = run(model, LRUPromptCache(max_size=1000), system, system_caches, requests, skip)
        dpc = PoolPromptCache(spec, pc.budget_nbytes, block_tokens=64, cache_dir=tmp / f"{name.replace(' ', '-')}-cache-dir", model_id="bench")
        df, _, di = run(model, dpc, system, system_caches, requests, skip)   # --cache-dir: insert also snapshots the prompt for the writer
        dpc.disk.close()
        out["models"][name] = dict(kv_bytes_per_token=spec.nbytes([1]) // 256, requests=requests, counted=requests - skip,
                                   system_prefill_s=system_s, cache_nbytes=pc.budget_nbytes,
                                   kvspec=dict(fetch_ms=1e3 * kf, insert_ms=1e3 * ki, total_ms=1e3 * (kf + ki), prefill_ms=1e3 * kc, admission_ms=admission_ms(tokenizer), **parts(pc, system)),
                                   stock=dict(fetch_ms=1e3 * sf, insert_ms=1e3 * si, total_ms=1e3 * (sf + si), prefill_ms=1e3 * sc),
                                   kvspec_cache_dir=dict(fetch_ms=1e3 * df, insert_ms=1e3 * di, total_ms=1e3 * (df + di)))
        print(name, json.dumps(out["models"][name]), flush=True)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__": main()
