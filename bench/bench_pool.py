"""Benchmarks of kvspec.pool / kvspec.store: allocate+free throughput, gather bandwidth, capacity, waste.

Run: .venv/bin/python bench/bench_pool.py   (writes bench/results/pool.json, then re-executes
nbs/experiments/pool_benchmarks.ipynb so the docs show these results; about a minute on 2 cores).
`--render` only re-executes the notebook from the JSON already there.
Timings are medians of REPEATS runs; nothing here is asserted.
"""
from __future__ import annotations

import dataclasses, json, os, platform, statistics, sys, time
from importlib.metadata import version
from pathlib import Path

import mlx.core as mx

from kvspec.build import from_config
from kvspec.pool import BlockPool, PoolExhausted
from kvspec.store import PoolStore

REPEATS = 7
GiB = 1 << 30
OUT = Path(__file__).parent / "results" / "pool.json"
NOTEBOOK = Path(__file__).parent.parent / "nbs" / "experiments" / "pool_benchmarks.ipynb"

def median_time(f, repeats=REPEATS):
    times = []
    for _ in range(repeats):
        t = time.perf_counter(); f(); times.append(time.perf_counter() - t)
    return statistics.median(times)

def alloc_free(spec, blocks_per_seq, n_seqs, block_tokens=256):
    "Median seconds per block to admit and free n_seqs sequences of blocks_per_seq blocks each (token counts, no hashing)."
    pool = BlockPool(spec, 1 << 40, block_tokens, context_tokens=blocks_per_seq * block_tokens)   # bookkeeping only: no storage
    tokens = blocks_per_seq * block_tokens
    def run():
        for i in range(n_seqs): pool.admit(i, tokens)
        for i in range(n_seqs): pool.free(i)
    blocks = n_seqs * sum(g.rule.blocks_for(tokens, block_tokens) for g in pool.groups)
    return median_time(run) / blocks

def alloc_extend(spec, n_blocks, block_tokens=256):
    "Median seconds per block to grow one sequence a block at a time, then free it."
    pool = BlockPool(spec, 1 << 40, block_tokens)
    def run():
        pool.admit("s", block_tokens)
        for _ in range(n_blocks - 1): pool.extend("s", block_tokens)
        pool.free("s")
    return median_time(run) / n_blocks

def gather(spec, tokens, block_tokens=256, budget=GiB):
    "Gather bandwidth (blocks → mlx-lm cache arrays) against a plain copy of the same bytes."
    pool = BlockPool(spec, budget, block_tokens, context_tokens=tokens)
    store = PoolStore(pool)
    # interleave two sequences so the gathered blocks are not contiguous in storage
    pool.admit("a", 0); pool.admit("b", 0)
    for _ in range(tokens // block_tokens): pool.extend("a", block_tokens); pool.extend("b", block_tokens)
    for arrs in store.arrays.values():
        for j, a in enumerate(arrs): arrs[j] = mx.random.normal(a.shape).astype(a.dtype)
    mx.eval(list(store.arrays.values()))
    _, held = store.gather("a"); mx.eval(held)
    nbytes = sum(a.nbytes for arrs in held.values() for a in arrs)
    plain = {i: [mx.random.normal(a.shape).astype(a.dtype) for a in arrs] for i, arrs in held.items()}
    mx.eval(plain)
    def g(): mx.eval(store.gather("a")[1])
    def c(): mx.eval([a + 0 for arrs in plain.values() for a in arrs])   # an elementwise copy: MLX has no bare memcpy op
    tg, tc = median_time(g), median_time(c)
    return dict(tokens=tokens, bytes=nbytes, gather_s=tg, copy_s=tc, gather_GBps=nbytes / tg / 1e9, copy_GBps=nbytes / tc / 1e9,
                ratio=tc / tg)

def all_full(spec):
    "The same model with every cache treated as full attention."
    leaves = [dataclasses.replace(c, kind="full", cache_class="KVCache", window=None) for c in spec.caches]
    return dataclasses.replace(spec, caches=tuple(leaves))

def capacity(spec, context, budget, block_tokens=256):
    "Sequences of `context` tokens that fit: this pool (admitted until PoolExhausted), all-full pool, ideal."
    def fill(s):
        pool = BlockPool(s, budget, block_tokens, context_tokens=context)
        n = 0
        while True:
            try: pool.admit(n, context); n += 1
            except PoolExhausted: break
        st = pool.stats()
        pool.free(0); pool.admit(0, context)
        waste = {x["group"]: x["waste_bytes"] / n for x in pool.stats()}
        return n, pool, st, waste
    n_pool, pool, st, waste = fill(spec)
    n_full, _, _, _ = fill(all_full(spec))
    exact = sum(c.slot_bytes * (min(context, c.window) if c.window else context) for c in spec.caches)
    one_block = sum(g.block_bytes for g in pool.groups)
    return dict(context=context, budget_bytes=budget, block_tokens=block_tokens,
                groups=[dict(group=g.name, blocks=g.num_blocks, block_bytes=g.block_bytes,
                             blocks_per_seq=g.rule.blocks_for(context, block_tokens), share=g.num_blocks * g.block_bytes / budget)
                        for g in pool.groups],
                pool_seqs=n_pool, all_full_seqs=n_full, ideal_seqs=budget // exact, ideal_bytes_per_seq=exact,
                target_seqs=budget // (exact + one_block),
                pool_bytes_per_seq=sum(g.block_bytes * g.rule.blocks_for(context, block_tokens) for g in pool.groups),
                utilisation={x["group"]: x["utilisation"] for x in st})

def waste_per_seq(spec, lengths, block_tokens=256):
    out = []
    for n in lengths:
        pool = BlockPool(spec, 64 * GiB, block_tokens, context_tokens=max(lengths))
        pool.admit("s", n)
        st = pool.stats()
        out.append(dict(tokens=n, waste_bytes=sum(x["waste_bytes"] for x in st), held_bytes=sum(x["used_bytes"] for x in st),
                        by_group={x["group"]: x["waste_bytes"] for x in st}))
    return out

def main():
    llama = from_config("Meta-Llama-3.1-8B-Instruct-4bit")
    gemma = from_config("gemma-3-12b-it-4bit")
    res = dict(machine=dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                            cpus=os.cpu_count(), python=platform.python_version(), mlx=version("mlx"), mlx_lm=version("mlx-lm"),
                            device=str(mx.default_device())),
               repeats=REPEATS, when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    res["alloc_free"] = [
        dict(model="llama-3.1-8b", mode="single (admit 1 block + free)", us_per_block=1e6 * alloc_free(llama, 1, 2000)),
        dict(model="llama-3.1-8b", mode="single (extend 1 block at a time)", us_per_block=1e6 * alloc_extend(llama, 512)),
        dict(model="llama-3.1-8b", mode="batch (admit 64 blocks + free)", us_per_block=1e6 * alloc_free(llama, 64, 100)),
        dict(model="llama-3.1-8b", mode="batch (admit 512 blocks + free)", us_per_block=1e6 * alloc_free(llama, 512, 20)),
        dict(model="gemma-3-12b", mode="batch (admit 32k tokens + free)", us_per_block=1e6 * alloc_free(gemma, 128, 20)),
    ]
    small = dataclasses.replace(llama, caches=llama.caches[:8])   # 8 layers keep the store small enough for a CI box
    res["gather"] = [dict(model="llama-3.1-8b (8 layers, bf16)", **gather(small, t)) for t in (1024, 4096)]
    res["capacity"] = dict(model="gemma-3-12b-it-4bit", **capacity(gemma, 32768, 16 * GiB))
    res["waste"] = [dict(model="gemma-3-12b-it-4bit", **w) for w in waste_per_seq(gemma, [1000, 4096, 32100, 32768])]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))

def render():
    "Re-execute the benchmark page (its cells only read the JSON) and store its outputs, so the docs show the latest run."
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell
    nb, cwd = read_nb(NOTEBOOK), os.getcwd()
    os.chdir(NOTEBOOK.parent)
    try: CaptureShell().run_all(nb, exc_stop=True)
    finally: os.chdir(cwd)
    write_nb(nb, NOTEBOOK)
    print(f"rendered {NOTEBOOK}")

if __name__ == "__main__":
    if "--render" not in sys.argv[1:]: main()
    render()
