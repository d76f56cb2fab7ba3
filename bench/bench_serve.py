"""Stock `mlx_lm.server` and `kvspec serve` side by side, in one run: same demo models, same requests.

(a) Equal memory, W1: conversations sharing a long system prompt (demo llama: 16 conversations x 3 turns, a 2,048-token
    system prompt, 32-token questions, 16 generated tokens, 4 clients), both servers at the same 5 byte budgets (demo llama:
    0.5, 1, 2, 4, 8 MiB; other models and --quick: the same fractions of their W1's ideal, its distinct tokens once) —
    `--cache-bytes` for kvspec, `--prompt-cache-bytes` for stock, stock at its default `--prompt-cache-size` 10 and at 1000.
    Per server: prefill tokens (prompt - cached, from each response's usage), prefix-hit rate, the most prompt-cache bytes
    held (sampled every 50 ms) against the budget, TTFT median and p95 (streamed), decode tokens/s (after the first token).
(b) Overload, W3: 16 clients at once, prompts of 1k-6k tokens (distinct), max_tokens 256 (the larger model: the same shape,
    scaled down, see PLANS). kvspec with `--memory` set so that 3 of the longest requests fit at once (the server's own
    ledger, `kvspec.fit.serve_fit`); stock as it is (it has no --memory). Per server: MLX's peak memory (its own counters,
    `mx.get_peak_memory`) against that limit, completed / 503 / 400 counts, completed tokens per second.
(c) Both on `kvspec demo-model` llama (small, 512 B of KV per token) and its large size (12 layers at hidden 768, 24 KiB a
    token). kvspec's per-request cache overhead comes from bench/bench_cache_calls.py; the page puts it beside TTFT.
(d) kvspec with --cache-dir set vs unset (demo llama, W1 at its largest budget, 4 clients): decode tokens/s.

Timings on a shared 2-core machine are noisy, so on the demo llama the servers the timing targets compare (stock at its
default size, kvspec, kvspec with --cache-dir) run --rounds times (default 3), rounds interleaved (every budget and server
once, then again), and a timing is the median over rounds; stock at size 1000 runs once; bytes and prefill tokens are
round 1's (the maxima over all rounds for bytes and over-budget samples). The larger model runs --large-rounds times
(default 1): its prefill runs about 12 tokens a second here (MLX's Linux CPU build ships reference BLAS), so its workloads
are scaled down (PLANS) and it runs at 3 of the 5 budgets, to keep the run near an hour. Compare medians and ratios
within a run.

The stock server is built as mlx-lm's own `run()` builds it (LRUPromptCache(--prompt-cache-size), ResponseGenerator,
ModelProvider, _run_http_server), with a handler subclass, in this script's own child process, that answers
`GET /kvspec/stats` with its prompt cache's bytes and MLX's own memory counters; mlx-lm is not patched.
Nothing here is asserted: the targets are the page's (nbs/experiments/serve_benchmarks.ipynb).

Run: .venv/bin/python bench/bench_serve.py [--quick] [--rounds N] [--models small,large] [--parts equal,overload]
     (writes bench/results/serve.json and bench/results/serve_equal_memory.png; --plot redraws the figure from the JSON)
"""
from __future__ import annotations

import argparse, json, os, platform, shutil, socket, statistics, subprocess, sys, tempfile, threading, time, urllib.error, urllib.request
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "serve.json"
FIGURE = ROOT / "bench" / "results" / "serve_equal_memory.png"
MiB = 1 << 20
SMALL_BUDGETS = [MiB // 2, MiB, 2 * MiB, 4 * MiB, 8 * MiB]   # the demo llama's, full run; elsewhere the same fractions of W1's ideal
SERVERS = ("stock (size 10)", "stock (size 1000)", "kvspec")
COMPARED = ("stock (size 10)", "kvspec")             # the servers the timing targets compare: every round (the others: round 1)
CACHE_DIR_SERVER = "kvspec --cache-dir"
TIMINGS = ("ttft_median_s", "ttft_p95_s", "decode_tps_median")
PLANS = {   # per model and mode: W1 (equal memory), which of the 5 budgets' fractions it runs at, and W3 (overload)
    ("small", False): dict(budgets=(0, 1, 2, 3, 4), W1=dict(conversations=16, turns=3, system_tokens=2048, question_tokens=32, max_tokens=16, clients=4),
                           W3=dict(clients=16, prompt_tokens=(1000, 6000), max_tokens=256)),
    ("large", False): dict(budgets=(0, 2, 4), W1=dict(conversations=4, turns=2, system_tokens=128, question_tokens=16, max_tokens=4, clients=4),
                           W3=dict(clients=16, prompt_tokens=(32, 192), max_tokens=8)),
    ("small", True): dict(budgets=(0, 1, 2, 3, 4), W1=dict(conversations=4, turns=2, system_tokens=512, question_tokens=32, max_tokens=8, clients=4),
                          W3=dict(clients=16, prompt_tokens=(200, 1200), max_tokens=32)),
    ("large", True): dict(budgets=(0, 2, 4), W1=dict(conversations=2, turns=2, system_tokens=64, question_tokens=16, max_tokens=4, clients=2),
                          W3=dict(clients=16, prompt_tokens=(16, 96), max_tokens=4)),
}
SHORT_NAMES = {"small": "demo llama (2 layers, 512 B of KV a token)", "large": "demo llama --size large (12 layers at hidden 768, 24 KiB a token)"}
MODEL_NAMES = {"small": "kvspec demo-model llama (2 layers, 2 KV heads x 16, float32: 512 B of KV per token)",
               "large": "kvspec demo-model llama --size large (12 layers at hidden 768, 4 KV heads x 64, float32: 24 KiB of KV per token)"}
W3_FIT = 3   # the longest W3 requests kvspec's --memory admits at once


# ---- the servers, each in a child process of this script ----

def child(kind: str, argv: list[str]):
    "Run one server in this process: stock (mlx-lm's own run(), plus a stats endpoint) or kvspec serve."
    import logging
    import mlx.core as mx
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s - %(levelname)s - %(message)s")
    if kind == "kvspec":
        from kvspec.serve import serve, serve_parser
        return serve(serve_parser().parse_args(argv))
    from mlx_lm.models.cache import LRUPromptCache
    from mlx_lm.server import APIHandler, ModelProvider, ResponseGenerator, _run_http_server
    from kvspec.serve import add_mlx_lm_server_arguments     # exactly mlx_lm.server's options and defaults
    args = add_mlx_lm_server_arguments(argparse.ArgumentParser()).parse_args(argv)
    class StatsHandler(APIHandler):    # stock behaviour, plus a read-only look at its prompt cache and MLX's counters
        def do_GET(self):
            if self.path != "/kvspec/stats": return super().do_GET()
            pc = self.response_generator.prompt_cache
            body = json.dumps({"cache_nbytes": pc.nbytes, "entries": len(pc), "budget_nbytes": args.prompt_cache_bytes,
                               "mlx_active_nbytes": mx.get_active_memory(), "mlx_peak_nbytes": mx.get_peak_memory(),
                               "mlx_cache_nbytes": mx.get_cache_memory()}).encode()
            self._set_completion_headers(200); self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
    # what mlx_lm.server.run does (its handler_class is not passed on to _run_http_server in 0.32.2, so the steps are repeated here)
    generator = ResponseGenerator(ModelProvider(args), LRUPromptCache(args.prompt_cache_size))
    _run_http_server(args.host, args.port, generator, handler_class=StatsHandler)


def free_port():
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r: return json.loads(r.read())


class Server:
    "One server process on a free loopback port, its stats sampled every 50 ms while it runs; stopped on exit."
    def __init__(self, kind, model, extra, log):
        self.port, self.samples, self.stop_sampling = free_port(), [], threading.Event()
        cmd = [sys.executable, __file__, "--child", kind, "--model", str(model), "--port", str(self.port), "--log-level", "WARNING", *extra]
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while True:
            if self.proc.poll() is not None:
                self.log.close(); tail = " | ".join(Path(log).read_text(errors="replace").strip().splitlines()[-6:])
                raise RuntimeError(f"{kind} server exited {self.proc.returncode}: {tail}")
            try: get(self.port, "/health"); break
            except OSError:
                if time.monotonic() > deadline: self.close(); raise TimeoutError(f"{kind} server did not come up: see {log}")
                time.sleep(0.2)
        self.t0 = time.perf_counter()
        self.sampler = threading.Thread(target=self._sample, daemon=True); self.sampler.start()

    def _sample(self):
        while not self.stop_sampling.is_set():
            try: self.samples.append(dict(get(self.port, "/kvspec/stats"), t=time.perf_counter() - self.t0))
            except (OSError, ValueError): pass
            self.stop_sampling.wait(0.05)

    def stats(self): return get(self.port, "/kvspec/stats")

    def close(self):
        self.stop_sampling.set()
        if getattr(self, "sampler", None): self.sampler.join(30)
        if self.proc.poll() is None:
            self.proc.terminate()
            try: self.proc.wait(30)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait(30)
        self.log.close()

    def __enter__(self): return self
    def __exit__(self, *exc): self.close()


# ---- requests ----

def request(port, body, timeout=1800):
    "POST a chat completion; (status, JSON body or None, headers)."
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r: return r.status, json.loads(r.read()), dict(r.headers)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try: out = json.loads(raw)
        except ValueError: out = {"raw": raw.decode(errors="replace")}
        return e.code, out, dict(e.headers)


def stream_chat(port, messages, max_tokens):
    "One streamed chat request: (answer, ttft seconds, decode tokens/s, usage)."
    body = dict(messages=messages, max_tokens=max_tokens, temperature=0.0, stream=True, stream_options={"include_usage": True})
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0, first, last, text, usage, n = time.perf_counter(), None, None, [], None, 0
    with urllib.request.urlopen(req, timeout=1800) as r:
        for line in r:
            line = line.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]": continue
            ev = json.loads(line[6:])
            if ev.get("usage"): usage = ev["usage"]
            for ch in ev.get("choices", []):
                piece = (ch.get("delta") or {}).get("content")
                if piece is not None:
                    now = time.perf_counter(); n += 1
                    first = first or now; last = now; text.append(piece)
    decode = (n - 1) / (last - first) if n > 1 and last > first else None
    return "".join(text), (first or time.perf_counter()) - t0, decode, usage


def run_all(f, items, workers):
    "`[f(x) for x in items]` on `workers` threads; on an error or a stop, returns at once (the caller stops the server, which ends the requests)."
    ex = ThreadPoolExecutor(workers)
    try: return list(ex.map(f, items))
    finally: ex.shutdown(wait=False, cancel_futures=True)


def text_of(tokenizer, n_tokens, seed):
    "Deterministic filler text of about n_tokens tokens under `tokenizer`."
    from kvspec.demo import DEMO_TEXT
    parts, i = [], 0
    while len(tokenizer.encode(" ".join(parts))) < n_tokens:
        parts.append(f"({seed}.{i}) {DEMO_TEXT[(seed + i) % len(DEMO_TEXT)]}"); i += 1
    return tokenizer.decode(tokenizer.encode(" ".join(parts))[:n_tokens])


def w1_requests(tokenizer, p):
    "W1: a shared system prompt and each conversation's questions."
    return dict(system=text_of(tokenizer, p["system_tokens"], 0), clients=p["clients"], max_tokens=p["max_tokens"],
                conversations=[[text_of(tokenizer, p["question_tokens"], 100 + c * 10 + t) for t in range(p["turns"])]
                               for c in range(p["conversations"])])


def ideal_tokens(tokenizer, w):
    "W1's distinct tokens: the system prompt once, then each conversation's turns and answers (max_tokens each) once."
    msgs = lambda turns: [{"role": "system", "content": w["system"]}] + [m for q in turns for m in
            ({"role": "user", "content": q}, {"role": "assistant", "content": "x " * w["max_tokens"]})]
    n = lambda m: len(tokenizer.apply_chat_template(m, tokenize=True))
    system = n(msgs([]))
    return system + sum(n(msgs(turns)) - system for turns in w["conversations"])


def play_w1(port, w):
    "Run W1 against a server; per request: ttft, decode tokens/s, prompt and cached tokens."
    results, lock = [], threading.Lock()
    def conversation(turns):
        msgs = [{"role": "system", "content": w["system"]}]
        for q in turns:
            msgs.append({"role": "user", "content": q})
            answer, ttft, decode, usage = stream_chat(port, msgs, w["max_tokens"])
            msgs.append({"role": "assistant", "content": answer})
            cached = ((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens", 0)
            with lock: results.append(dict(ttft_s=ttft, decode_tps=decode, prompt_tokens=(usage or {}).get("prompt_tokens"),
                                           cached_tokens=cached, completion_tokens=(usage or {}).get("completion_tokens")))
    run_all(conversation, w["conversations"], w["clients"])
    return results


def summarise_w1(results, samples, budget):
    ttft = sorted(r["ttft_s"] for r in results)
    dec = [r["decode_tps"] for r in results if r["decode_tps"]]
    prompt = sum(r["prompt_tokens"] or 0 for r in results); cached = sum(r["cached_tokens"] or 0 for r in results)
    held = [s.get("held_nbytes", s["cache_nbytes"]) for s in samples]   # bytes cached prompts reference (stock: its entries)
    kept = [s["cache_nbytes"] for s in samples]                           # kvspec: plus unreferenced blocks kept for reuse
    return dict(requests=len(results), prompt_tokens=prompt, cached_tokens=cached, prefill_tokens=prompt - cached,
                prefix_hit_rate=cached / prompt if prompt else 0.0,
                ttft_median_s=statistics.median(ttft), ttft_p95_s=ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))],
                decode_tps_median=statistics.median(dec) if dec else None,
                held_nbytes_max=max(held, default=0), cache_nbytes_max=max(kept, default=0),
                storage_nbytes=max((s.get("storage_nbytes", 0) for s in samples), default=0),
                budget_nbytes=budget, over_budget_samples=sum(h > budget for h in kept), samples=len(held))


def combine(rounds: list[dict]) -> dict:
    "One server's summary over its rounds: round 1's, with timings the median over rounds, byte maxima and over-budget counts over all."
    out = dict(rounds[0])
    for k in TIMINGS: out[k] = statistics.median(r[k] or 0 for r in rounds)
    for k in ("held_nbytes_max", "cache_nbytes_max"): out[k] = max(r[k] for r in rounds)
    for k in ("over_budget_samples", "samples"): out[k] = sum(r[k] for r in rounds)
    out["rounds"] = [{k: r[k] for k in TIMINGS + ("prefill_tokens",)} for r in rounds]
    return out


def server_args(name, budget, tmp):
    "kind and extra options of one equal-memory server at `budget`."
    if name == "stock (size 10)": return "stock", ["--prompt-cache-bytes", str(budget)]
    if name == "stock (size 1000)": return "stock", ["--prompt-cache-bytes", str(budget), "--prompt-cache-size", "1000"]
    extra = ["--cache-bytes", str(budget), "--block-tokens", "64"]
    if name == CACHE_DIR_SERVER:
        d = Path(tempfile.mkdtemp(dir=tmp, prefix="cache-dir-")); extra += ["--cache-dir", str(d)]
    return "kvspec", extra


def equal_memory(model, tokenizer, plan, budgets, rounds, tmp, cache_dir_arm):
    "(a) and (d): every server at every budget, `rounds` interleaved rounds; {budget: {server: summary}}."
    w = w1_requests(tokenizer, plan["W1"])
    got = {b: {n: [] for n in SERVERS + ((CACHE_DIR_SERVER,) if cache_dir_arm and b == budgets[-1] else ())} for b in budgets}
    for r in range(rounds):
        for b in budgets:
            for name in got[b]:
                if r and name not in COMPARED + (CACHE_DIR_SERVER,): continue
                kind, extra = server_args(name, b, tmp)
                t = time.perf_counter()
                with Server(kind, model, extra, tmp / f"{kind}.log") as srv:
                    results = play_w1(srv.port, w); time.sleep(0.2)
                s = summarise_w1(results, srv.samples, b); got[b][name].append(s)
                print(f"  round {r + 1} {b / MiB:6.2f} MiB {name:<20} prefill {s['prefill_tokens']:>7,}  hit {s['prefix_hit_rate']:.2f}  "
                      f"held max {s['held_nbytes_max'] / MiB:6.2f} MiB (with reusable {s['cache_nbytes_max'] / MiB:6.2f})  over {s['over_budget_samples']:>3}/{s['samples']}"
                      f"  ttft {s['ttft_median_s'] * 1e3:7.1f}/{s['ttft_p95_s'] * 1e3:7.1f} ms  decode {s['decode_tps_median'] or 0:6.1f} tok/s  "
                      f"({time.perf_counter() - t:.0f} s)", flush=True)
    return dict(workload=dict(plan["W1"], requests=sum(len(c) for c in w["conversations"]),
                              system_tokens_templated=len(tokenizer.apply_chat_template([{"role": "system", "content": w["system"]}], tokenize=True)),
                              ideal_tokens=ideal_tokens(tokenizer, w)),
                rounds=rounds, budgets={str(b): {n: combine(rs) for n, rs in servers.items()} for b, servers in got.items()})


# ---- (b) overload ----

def overload_memory(model, cache_bytes, tokens, fit_at_once=W3_FIT, prefill_step=2048, prompt_concurrency=8):
    "The smallest --memory (whole MiB) at which kvspec serve's ledger admits `fit_at_once` requests of `tokens` at once."
    from kvspec.build import from_pretrained
    from kvspec.config import load_config
    from kvspec.fit import serve_fit
    from kvspec.units import largest_true
    from kvspec.weights import weights
    cfg, spec, w = load_config(str(model))[0], from_pretrained(str(model)), weights(str(model)).nbytes
    fits = lambda mib: serve_fit(cfg, spec, w, memory=mib * MiB, cache_bytes=cache_bytes, request_tokens=tokens,
                                 concurrency=fit_at_once, prefill_step=prefill_step, prompt_concurrency=prompt_concurrency).fits
    return (largest_true(lambda mib: not fits(mib), 1 << 24) + 1) * MiB


def play_w3(port, prompts, max_tokens):
    "Every prompt at once, one client each, not streamed; per request: status, tokens, seconds, Retry-After."
    t0 = time.perf_counter()
    def one(text):
        t = time.perf_counter()
        try: status, out, headers = request(port, dict(messages=[{"role": "user", "content": text}], max_tokens=max_tokens, temperature=0.0))
        except OSError as e: status, out, headers = None, {"error": f"{type(e).__name__}: {e}"}, {}   # no HTTP answer: counted as other
        usage = (out or {}).get("usage") or {}
        return dict(status=status, seconds=time.perf_counter() - t, end_s=time.perf_counter() - t0,
                    prompt_tokens=usage.get("prompt_tokens"), completion_tokens=usage.get("completion_tokens", 0) if status == 200 else 0,
                    retry_after=headers.get("Retry-After"), error=None if status == 200 else str((out or {}).get("error", out))[:300])
    results = run_all(one, prompts, len(prompts))
    return results, time.perf_counter() - t0


def overload(model, tokenizer, plan, cache_bytes, tmp):
    "(b): W3 against kvspec (--memory: W3_FIT of the longest fit at once) and stock as it is."
    p = plan["W3"]; lo, hi = p["prompt_tokens"]; n = p["clients"]
    lengths = [round(lo + (hi - lo) * i / (n - 1)) for i in range(n)]
    prompts = [text_of(tokenizer, k, 1000 + i) for i, k in enumerate(lengths)]
    templated = [len(tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True, tokenize=True)) for t in prompts]
    memory = overload_memory(model, cache_bytes, max(templated) + p["max_tokens"])
    out = dict(workload=dict(p, prompt_tokens_templated=templated), memory_nbytes=memory, cache_bytes=cache_bytes, servers={})
    same = ["--max-tokens", str(p["max_tokens"])]   # the default for requests without one; kvspec's start check sizes one such request
    for name, kind, extra in [("stock", "stock", same),
                              ("kvspec", "kvspec", same + ["--memory", str(memory), "--cache-bytes", str(cache_bytes), "--block-tokens", "64",
                                                           "--balance-tokens", str(max(templated))])]:
        with Server(kind, model, extra, tmp / f"w3-{kind}.log") as srv:
            before = srv.stats()
            results, wall = play_w3(srv.port, prompts, p["max_tokens"])
            time.sleep(0.2); after = srv.stats()
        peak = max([after["mlx_peak_nbytes"]] + [s["mlx_peak_nbytes"] for s in srv.samples])
        codes = [r["status"] for r in results]
        done = sum(r["completion_tokens"] for r in results)
        s = dict(completed=codes.count(200), http_503=codes.count(503), http_400=codes.count(400),
                 other=len(codes) - codes.count(200) - codes.count(503) - codes.count(400),
                 retry_after_on_503=sum(1 for r in results if r["status"] == 503 and r["retry_after"]),
                 completion_tokens=done, wall_s=wall, tokens_per_s=done / wall if wall else 0.0,
                 mlx_peak_nbytes=peak, mlx_peak_at_start_nbytes=before["mlx_peak_nbytes"],
                 mlx_active_max_nbytes=max((x["mlx_active_nbytes"] for x in srv.samples), default=after["mlx_active_nbytes"]),
                 ledger={k: after[k] for k in ("memory_limit_nbytes", "weights_nbytes", "cache_budget_nbytes", "mlx_cache_limit_nbytes",
                                               "reserve_nbytes", "longest_request_tokens", "admitted_requests", "waited_requests",
                                               "refused_requests") if k in after},
                 requests=results)
        out["servers"][name] = s
        print(f"  W3 {name:<7} {s['completed']:>2} completed, {s['http_503']} x 503, {s['http_400']} x 400, {s['other']} other; "
              f"{done:,} tokens in {wall:.0f} s = {s['tokens_per_s']:.1f} tok/s; MLX peak {peak / MiB:.0f} MiB (limit {memory / MiB:.0f} MiB)", flush=True)
    return out


# ---- the figure ----

def plot_equal_memory(res, path=None):
    "Hit rate and prefill tokens against the budget, one line per server, one column per model; saved to `path` if given."
    import matplotlib
    if path is not None: matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = [m for m in res["models"] if "equal_memory" in res["models"][m]]
    fig, axes = plt.subplots(2, len(models), figsize=(5.2 * len(models), 6.4), squeeze=False)
    styles = {"stock (size 10)": dict(color="C1", marker="s"), "stock (size 1000)": dict(color="C3", marker="^"),
              "kvspec": dict(color="C0", marker="o", lw=2.2)}
    for j, m in enumerate(models):
        em = res["models"][m]["equal_memory"]
        budgets = sorted(em["budgets"], key=int)
        for name, st in styles.items():
            x = [int(b) / MiB for b in budgets]
            axes[0][j].plot(x, [em["budgets"][b][name]["prefix_hit_rate"] for b in budgets], label=name, **st)
            axes[1][j].plot(x, [em["budgets"][b][name]["prefill_tokens"] for b in budgets], label=name, **st)
        ideal = em["workload"]["ideal_tokens"] * res["models"][m]["kv_bytes_per_token"] / MiB
        for ax in (axes[0][j], axes[1][j]):
            ax.set_xscale("log", base=2); ax.axvline(ideal, color="grey", ls=":", lw=1)
            ax.set_xticks(x); ax.set_xticklabels([f"{v:.3g}" for v in x]); ax.minorticks_off(); ax.grid(alpha=0.3)
        axes[0][j].set_title(f"{SHORT_NAMES.get(m, m)}\nW1: {em['workload']['conversations']} conversations x {em['workload']['turns']} turns, "
                             f"{em['workload']['system_tokens']:,}-token system prompt, {em['workload']['clients']} clients", fontsize=9)
        axes[0][j].set_ylabel("prefix-hit rate"); axes[0][j].set_ylim(0, 1)
        axes[1][j].set_ylabel("prefill tokens"); axes[1][j].set_xlabel("prompt-cache budget (MiB); dotted: W1's distinct tokens, once", fontsize=9)
        axes[1][j].set_ylim(bottom=0)
    axes[0][0].legend(fontsize=8, loc="lower right")
    fig.suptitle("Equal memory: the same byte budget for stock mlx_lm.server and kvspec serve", fontsize=11)
    fig.tight_layout()
    if path is not None: fig.savefig(path, dpi=110); plt.close(fig)
    return fig


# ---- main ----

def save(out, path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(out, indent=1))


def main():
    ap = argparse.ArgumentParser(allow_abbrev=False)   # a child's --model is not --models
    ap.add_argument("--child", choices=["stock", "kvspec"]); ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(OUT)); ap.add_argument("--figure", default=str(FIGURE))
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds on the demo llama (default 3)")
    ap.add_argument("--large-rounds", type=int, default=1, help="interleaved rounds on the larger model (default 1)")
    ap.add_argument("--models", default="small,large"); ap.add_argument("--parts", default="equal,overload")
    ap.add_argument("--plot", action="store_true", help="only redraw the figure from --out")
    a, rest = ap.parse_known_args()
    if a.child: return child(a.child, rest)
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))   # stopped: close the servers (the with-blocks) and save what was measured
    if a.plot: return plot_equal_memory(json.loads(Path(a.out).read_text()), a.figure)
    from kvspec.build import from_pretrained
    from kvspec.demo import demo_model
    from mlx_lm.utils import load_tokenizer
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    import mlx.core as mx
    out = dict(quick=a.quick, when=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
               machine=dict(platform=platform.platform(), processor=platform.processor() or platform.machine(), cpus=os.cpu_count(),
                            memory_nbytes=os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), python=platform.python_version(),
                            mlx_device=str(mx.default_device())),
               versions={p: version(p) for p in ("mlx", "mlx-lm")}, command=" ".join(["bench/bench_serve.py"] + sys.argv[1:]), models={})
    t_all = time.perf_counter()
    small_ideal = None
    try:
        for m in a.models.split(","):
            plan = PLANS[(m, a.quick)]
            model = demo_model(tmp / m, "llama", size=m)
            tok = load_tokenizer(model)
            per_token = from_pretrained(str(model)).nbytes([1]) // 256   # one KVCache step of 256 tokens
            if small_ideal is None:   # the demo llama's full W1: the budgets' fractions of its ideal
                small_ideal = ideal_tokens(tok, w1_requests(tok, PLANS[("small", False)]["W1"])) * 512
            ideal = ideal_tokens(tok, w1_requests(tok, plan["W1"])) * per_token
            budgets = [SMALL_BUDGETS[i] if (m, a.quick) == ("small", False) else max(64 * per_token, round(SMALL_BUDGETS[i] / small_ideal * ideal))
                       for i in plan["budgets"]]
            res = out["models"][m] = dict(label=MODEL_NAMES[m], kv_bytes_per_token=per_token)
            rounds = a.rounds if m == "small" else a.large_rounds
            parts = {"equal_memory": lambda: equal_memory(model, tok, plan, budgets, rounds, tmp, cache_dir_arm=(m == "small")),
                     "overload": lambda: overload(model, tok, plan, budgets[-1], tmp)}
            for part, run_part in parts.items():
                if part.split("_")[0] not in a.parts: continue
                print(f"{m}: {part}" + (f", budgets {', '.join(f'{b / MiB:.2f}' for b in budgets)} MiB (W1 ideal {ideal / MiB:.2f} MiB), "
                                         f"{rounds} round(s)" if part == "equal_memory" else ""), flush=True)
                t = time.perf_counter()
                try: res[part] = run_part()
                except Exception as e:   # a long unattended run keeps what the other parts measure
                    res.setdefault("errors", {})[part] = f"{type(e).__name__}: {e}"; print(f"  {part} failed: {e!r}", flush=True)
                res[f"{part}_s"] = time.perf_counter() - t; save(out, a.out)
    finally:
        out["total_s"] = time.perf_counter() - t_all
        save(out, a.out)
        shutil.rmtree(tmp, ignore_errors=True)
        if any("equal_memory" in r for r in out["models"].values()): plot_equal_memory(out, a.figure)
    print(f"wrote {a.out} and {a.figure} in {out['total_s'] / 60:.1f} min")


if __name__ == "__main__":
    main()
