"""Bad input stays fast and bounded: absurd config sizes refused, huge contexts in closed form (run: PYTHONPATH=. python bench/core_bad_input.py)."""
import time, resource, itertools
from kvspec import KVSpecError, from_config, from_pretrained
from kvspec.config import load_config
def rss(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
llama = load_config("Meta-Llama-3.1-8B-Instruct-4bit")[0]
gemma = from_pretrained("gemma-3-12b-it-4bit")
base = rss()
worst = 0
for key, v in itertools.product(["num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_size", "vocab_size", "intermediate_size"], [10**4, 10**6, 10**9, 10**30]):
    t = time.perf_counter()
    try: from_config({**llama, key: v})
    except KVSpecError as e: msg = str(e)
    worst = max(worst, time.perf_counter() - t)
print(f"absurd sizes: worst {worst*1000:.1f} ms, max RSS growth {rss()-base:.0f} MB; e.g. {msg}")
for args in [dict(prompt_tokens=10**12), dict(prompt_tokens=10**6, prefill_step_size=1), dict(prompt_tokens=2**48 - 1, max_tokens=1)]:
    t = time.perf_counter(); r = gemma.generate_nbytes(**args); print(args, r, f"{(time.perf_counter()-t)*1000:.1f} ms", f"RSS growth {rss()-base:.0f} MB")
t = time.perf_counter(); s = from_config({**llama, "num_hidden_layers": 1024}); print(f"1024 layers: {time.perf_counter()-t:.2f}s, RSS growth {rss()-base:.0f} MB")
for src in ["foo/..", "/no/such/config.json", "gemma-3-12b-it-4bi"]:
    try: from_config(src)
    except KVSpecError as e: print(type(e).__name__, str(e)[:110])
