"""Stock `mlx_lm.server` and `kvspec serve` side by side: same demo model, same requests, one run.

W1: 32 conversations sharing a ~2,048-token system prompt, 4 turns each (32-token questions, 16 generated tokens), 4 clients.
W2: one ~8k-token document as the system prompt, 16 questions about it, one client.
Per server: prompt-cache bytes held (sampled every 50 ms: kvspec's blocks referenced by cached prompts, and with the
unreferenced blocks it keeps findable for reuse; its storage is allocated for the whole budget at start), prefill tokens computed (prompt - cached, from each response's
usage), TTFT median and p95 (streamed requests), decode tokens/s (per request, after the first token).

Run: .venv/bin/python bench/bench_serve.py [--quick] [--rounds N]   (writes bench/results/serve.json; about 30 minutes on 2 cores, --quick a few)
Both servers get the same byte budget (--cache-bytes for kvspec, --prompt-cache-bytes for stock; stock keeps its default
--prompt-cache-size 10 and also runs with --prompt-cache-size 1000); kvspec runs again with an eighth, a tenth and a twelfth of that
budget (W1 only: W2's 8k-token document does not fit in them, and kvspec refuses those requests with a 400 saying so), to show the
smallest budget that keeps stock's prefix-hit rate.
All servers run one after another in one run on a shared machine: compare medians and ratios within a run, not across runs.
The two servers the timing targets compare (stock with its defaults, kvspec at the same budget) run --rounds times (default 3),
interleaved (stock, kvspec, stock, kvspec, ...), and their timings are the median over rounds: one run's W2 decode speed was 134 and 159 tok/s on two
identically configured stock servers. Bytes and prefill tokens are round 1's (the maxima over all rounds for bytes and over-budget samples).
Nothing here is asserted: targets are benchmarks.
"""
from __future__ import annotations

import argparse, json, os, platform, socket, statistics, subprocess, sys, tempfile, threading, time, urllib.request
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results" / "serve.json"
BUDGET = 16 << 20
COMPARED = ("stock (size 10)", "kvspec")            # the servers the timing targets compare: run every round
TIMINGS = ("ttft_median_s", "ttft_p95_s", "decode_tps_median")


def child(kind: str, argv: list[str]):
    "Run one server in this process: stock (mlx-lm's own parts, as mlx_lm.server.run builds them) or kvspec."
    import logging
    from http.server import ThreadingHTTPServer
    from kvspec.serve import serve, serve_parser
    logging.basicConfig(level=logging.WARNING)
    args = serve_parser().parse_args(argv)
    if kind == "kvspec": return serve(args)
    from mlx_lm.models.cache import LRUPromptCache
    from mlx_lm.server import APIHandler, ModelProvider, ResponseGenerator
    lru = LRUPromptCache(args.prompt_cache_size)
    class StatsHandler(APIHandler):    # stock behaviour, plus a read-only look at its prompt cache's bytes
        def do_GET(self):
            if self.path != "/kvspec/stats": return super().do_GET()
            body = json.dumps({"cache_nbytes": lru.nbytes, "entries": len(lru), "budget_nbytes": args.prompt_cache_bytes}).encode()
            self._set_completion_headers(200); self.end_headers(); self.wfile.write(body)
    gen = ResponseGenerator(ModelProvider(args), lru)
    httpd = ThreadingHTTPServer((args.host, args.port), lambda *a, **kw: StatsHandler(gen, *a, **kw))
    try: httpd.serve_forever()
    except KeyboardInterrupt: pass
    finally: httpd.server_close(); gen.stop_and_join()


def free_port():
    with socket.socket() as s: s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r: return json.loads(r.read())


def start(kind, model, extra):
    port = free_port()
    cmd = [sys.executable, __file__, "--child", kind, "--model", str(model), "--port", str(port), "--log-level", "WARNING", *extra]
    proc = subprocess.Popen(cmd, env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None: raise RuntimeError(f"{kind} server exited {proc.returncode}")
        try: get(port, "/health"); return proc, port
        except OSError: time.sleep(0.2)
    proc.kill(); raise TimeoutError(kind)


def stream_chat(port, messages, max_tokens):
    "One streamed chat request: (answer, ttft seconds, decode tokens/s, usage)."
    body = dict(messages=messages, max_tokens=max_tokens, temperature=0.0, stream=True, stream_options={"include_usage": True})
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    t0, first, last, text, usage, n = time.perf_counter(), None, None, [], None, 0
    with urllib.request.urlopen(req, timeout=600) as r:
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


def text_of(tokenizer, n_tokens, seed):
    "Deterministic filler text of about n_tokens tokens under `tokenizer`."
    from kvspec.demo import DEMO_TEXT
    parts, i = [], 0
    while len(tokenizer.encode(" ".join(parts))) < n_tokens:
        parts.append(f"({seed}.{i}) {DEMO_TEXT[(seed + i) % len(DEMO_TEXT)]}"); i += 1
    ids = tokenizer.encode(" ".join(parts))[:n_tokens]
    return tokenizer.decode(ids)


def workloads(tokenizer, quick=False):
    n_conv, turns, sys_tokens, doc_tokens, n_q = (8, 2, 512, 2048, 4) if quick else (32, 4, 2048, 8192, 16)
    system = text_of(tokenizer, sys_tokens, 0)
    w1 = [[text_of(tokenizer, 32, 100 + c * 10 + t) for t in range(turns)] for c in range(n_conv)]
    doc = text_of(tokenizer, doc_tokens, 1)
    w2 = [text_of(tokenizer, 24, 500 + q) for q in range(n_q)]
    return dict(W1=dict(system=system, conversations=w1, clients=4, max_tokens=16),
                W2=dict(system=doc, conversations=[[q] for q in w2], clients=1, max_tokens=16))


def play(port, w):
    "Run a workload against a server; per request: ttft, decode tokens/s, prompt and cached tokens."
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
    with ThreadPoolExecutor(w["clients"]) as ex: list(ex.map(conversation, w["conversations"]))
    return results


def summarise(results, samples, budget):
    ttft = sorted(r["ttft_s"] for r in results)
    dec = [r["decode_tps"] for r in results if r["decode_tps"]]
    prompt = sum(r["prompt_tokens"] or 0 for r in results); cached = sum(r["cached_tokens"] or 0 for r in results)
    held = [s.get("held_nbytes", s["cache_nbytes"]) for s in samples]   # bytes cached prompts reference (stock: its entries)
    kept = [s["cache_nbytes"] for s in samples]                           # kvspec: plus unreferenced blocks kept for reuse
    return dict(requests=len(results), prompt_tokens=prompt, cached_tokens=cached, prefill_tokens=prompt - cached,
                prefix_hit_rate=cached / prompt if prompt else 0.0,
                ttft_median_s=statistics.median(ttft), ttft_p95_s=ttft[min(len(ttft) - 1, int(0.95 * len(ttft)))],
                decode_tps_median=statistics.median(dec) if dec else None,
                held_nbytes_max=max(held, default=0), held_nbytes_final=held[-1] if held else 0,
                cache_nbytes_max=max(kept, default=0), storage_nbytes=max((s.get("storage_nbytes", 0) for s in samples), default=0),
                budget_nbytes=budget, over_budget_samples=sum(h > budget for h in kept), samples=len(held),
                series=[[round(s["t"], 3), s.get("held_nbytes", s["cache_nbytes"]), s["cache_nbytes"]] for s in samples])


def combine(rounds: list[dict]) -> dict:
    "One server's summary over its rounds: round 1's, with timings the median over rounds, byte maxima and over-budget counts over all."
    out = dict(rounds[0])
    for k in TIMINGS: out[k] = statistics.median(r[k] or 0 for r in rounds)
    for k in ("held_nbytes_max", "cache_nbytes_max"): out[k] = max(r[k] for r in rounds)
    for k in ("over_budget_samples", "samples"): out[k] = sum(r[k] for r in rounds)
    out["rounds"] = [{k: r[k] for k in TIMINGS + ("prefill_tokens",)} for r in rounds]
    return out


def bench(model, name, kind, extra, w, budget):
    proc, port = start(kind, model, extra)
    stop, samples, t0 = threading.Event(), [], time.perf_counter()
    def sample():
        while not stop.is_set():
            try: samples.append(dict(get(port, "/kvspec/stats"), t=time.perf_counter() - t0))
            except OSError: pass
            stop.wait(0.05)
    th = threading.Thread(target=sample); th.start()
    try:
        results = play(port, w)
        time.sleep(0.2)
    finally:
        stop.set(); th.join(30); proc.terminate()
        try: proc.wait(30)
        except subprocess.TimeoutExpired: proc.kill(); proc.wait(30)
    s = summarise(results, samples, budget)
    print(f"  {name:<22} prefill {s['prefill_tokens']:>7,}  hit {s['prefix_hit_rate']:.2f}  held max {s['held_nbytes_max'] / 2**20:7.2f} MiB (with reusable {s['cache_nbytes_max'] / 2**20:6.2f})"
          f"  over budget {s['over_budget_samples']:>3}/{s['samples']}  ttft {s['ttft_median_s'] * 1e3:6.1f}/{s['ttft_p95_s'] * 1e3:6.1f} ms"
          f"  decode {s['decode_tps_median'] or 0:6.1f} tok/s", flush=True)
    return s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", choices=["stock", "kvspec"]); ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--rounds", type=int, default=3, help="runs of the two compared servers per workload, interleaved")
    a, rest = ap.parse_known_args()
    if a.child: return child(a.child, rest)
    from kvspec.demo import demo_model
    from mlx_lm.utils import load_tokenizer
    model = demo_model(Path(tempfile.mkdtemp()) / "llama", "llama")
    tok = load_tokenizer(model)
    budget = BUDGET
    servers = {"stock (size 10)": ("stock", ["--prompt-cache-bytes", str(budget)]),
               "stock (size 1000)": ("stock", ["--prompt-cache-bytes", str(budget), "--prompt-cache-size", "1000"]),
               "kvspec": ("kvspec", ["--cache-bytes", str(budget), "--block-tokens", "64"]),
               "kvspec (budget/8)": ("kvspec", ["--cache-bytes", str(budget // 8), "--block-tokens", "64"]),
               "kvspec (budget/10)": ("kvspec", ["--cache-bytes", str(budget // 10), "--block-tokens", "64"]),
               "kvspec (budget/12)": ("kvspec", ["--cache-bytes", str(budget // 12), "--block-tokens", "64"])}
    out = dict(model="kvspec demo-model llama (2 layers, 2 KV heads x 16, float32: 512 B of KV per token)", budget_nbytes=budget,
               quick=a.quick, versions={p: version(p) for p in ("mlx", "mlx-lm")}, machine=f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores",
               workloads={})
    for wname, w in workloads(tok, a.quick).items():
        print(wname, flush=True)
        run = {n: v for n, v in servers.items() if wname == "W1" or "budget/" not in n}   # W2's document needs more than budget/8
        got = {n: [] for n in run}
        for r in range(max(1, a.rounds)):
            for n, (k, e) in run.items():
                if r == 0 or n in COMPARED:
                    got[n].append(bench(model, n, k, e, w, int(e[e.index(next(o for o in e if o.endswith("-bytes"))) + 1])))
        out["workloads"][wname] = dict(requests=sum(len(c) for c in w["conversations"]), clients=w["clients"],
                                       system_tokens=len(tok.encode(w["system"])), rounds=max(1, a.rounds),
                                       servers={n: combine(rs) for n, rs in got.items()})
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print("wrote", a.out)


if __name__ == "__main__":
    main()
