"""`kvspec serve` as a user runs it: real server processes on loopback (stock `mlx_lm.server` beside it where compared),
real clients (the `openai` package and plain HTTP), each bounded in time and stopped in `finally`."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kvspec.demo import demo_model

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = ("You are a careful assistant. " + "The quick brown fox jumps over the lazy dog. " * 12).strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


class Server:
    "A server process on a free loopback port: `kvspec serve` (kind='kvspec') or stock `mlx_lm.server` (kind='stock')."
    def __init__(self, model, kind="kvspec", *extra, log=None):
        self.port = free_port()
        entry = ("import sys; from kvspec.cli import main; sys.exit(main(['serve'] + sys.argv[1:]))" if kind == "kvspec"
                 else "import sys; from mlx_lm.server import main; sys.exit(main())")
        cmd = [sys.executable, "-c", entry, "--model", str(model), "--port", str(self.port), "--log-level", "WARNING", *extra]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.log = open(log or os.devnull, "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited with {self.proc.returncode}"
            try:
                if get(self.port, "/health")[0] == 200: return
            except OSError: time.sleep(0.2)
        self.stop(); raise TimeoutError("server did not come up in 90 s")

    def stop(self, sig=signal.SIGINT):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try: self.proc.wait(30)
            except subprocess.TimeoutExpired: self.proc.kill(); self.proc.wait(30)
        self.log.close()

    def __enter__(self): return self
    def __exit__(self, *exc): self.stop()

    def stats(self): return get(self.port, "/kvspec/stats")[1]


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r: return r.status, json.loads(r.read())


def post(port, path, body, raw=None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r: return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        try: return e.code, json.loads(body)
        except ValueError: return e.code, {"raw": body.decode(errors="replace")}


def chat(port, messages, max_tokens=8, **kw):
    code, out = post(port, "/v1/chat/completions", dict(messages=messages, max_tokens=max_tokens, temperature=0.0, **kw))
    assert code == 200, out
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    out = {a: demo_model(d / a, a) for a in ("llama", "gemma3_text", "qwen3_next")}
    out["llama_hd64"] = demo_model(d / "llama_hd64", "llama", overrides={"head_dim": 64})   # --kv-bits: mlx quantizes groups of 64
    return out


def conversations(n=4, turns=2):
    "Requests as a chat client sends them: a shared system prompt, each conversation's turns, the answers fed back."
    return [[f"Question {i}.{t}: tell me about blocks and caches number {i * 7 + t}." for t in range(turns)] for i in range(n)]


def run_conversations(port, convs, max_tokens=8, after=None):
    "Play each conversation turn by turn (calling `after()` after each answer); returns the answers' texts and usages in order."
    out = []
    for turns in convs:
        msgs = [{"role": "system", "content": SYSTEM}]
        for q in turns:
            msgs.append({"role": "user", "content": q})
            r = chat(port, msgs, max_tokens)
            a = r["choices"][0]["message"]["content"]
            out.append((a, r["usage"]))
            if after: after()
            msgs.append({"role": "assistant", "content": a})
    return out


def sample_stats(server, stop, samples):
    while not stop.is_set():
        try: samples.append(server.stats())
        except OSError: pass
        stop.wait(0.05)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "qwen3_next"])
def test_greedy_identical_to_stock_and_budget_holds(models, arch, tmp_path):
    "Same model, same requests, greedy: kvspec serve answers token for token as stock mlx_lm.server, and never holds more than its budget."
    convs = conversations(6, 2)      # enough that the small budget below must evict (answers that only superseded prompts held are dropped anyway)
    with Server(models[arch], "stock") as stock:
        want = run_conversations(stock.port, convs)
    budget = 384 << 10       # small: a few conversations fit, the rest are evicted for
    with Server(models[arch], "kvspec", "--cache-bytes", str(budget), "--block-tokens", "16", "--balance-tokens", "256",
                log=tmp_path / "log.txt") as ours:
        stop, samples = threading.Event(), []
        th = threading.Thread(target=sample_stats, args=(ours, stop, samples)); th.start()
        # sampled in the background while requests run, and after every answer (so a fast machine samples too)
        try: got = run_conversations(ours.port, convs, after=lambda: samples.append(ours.stats()))
        finally: stop.set(); th.join(30)
        final = ours.stats()
    assert [a for a, _ in got] == [a for a, _ in want]
    assert [u["completion_tokens"] for _, u in got] == [u["completion_tokens"] for _, u in want]
    assert sum(u["completion_tokens"] for _, u in got) > 2 * len(got)
    assert len(samples) > len(got)
    assert all(s["cache_nbytes"] <= s["budget_nbytes"] == budget for s in samples + [final])
    assert all(s["storage_nbytes"] <= budget for s in samples)
    assert final["inserts"] > 0 and final["prefix_hit_tokens"] > 0, final
    if arch != "qwen3_next": assert final["evictions"] > 0, final     # the hybrid's prompts fit whole more often
    assert final["blocks_shared"] > 0, final   # the system prompt is stored once, the hybrid's attention blocks too (store.insert)
    assert sum(u["prompt_tokens_details"]["cached_tokens"] for _, u in got) == final["prefix_hit_tokens"]


def test_kv_bits_identical_to_stock_and_budget_holds(models, tmp_path):
    "--kv-bits 8: the pool holds the server's quantized caches; greedy answers token for token as stock mlx_lm.server --kv-bits 8."
    convs, q = conversations(3, 3), ("--kv-bits", "8", "--quantized-kv-start", "0")   # 0: every prompt's caches are quantized
    with Server(models["llama_hd64"], "stock", *q) as stock:
        want = run_conversations(stock.port, convs)
    budget = 1 << 20
    with Server(models["llama_hd64"], "kvspec", *q, "--cache-bytes", str(budget), "--block-tokens", "16", log=tmp_path / "log.txt") as ours:
        stop, samples = threading.Event(), []
        th = threading.Thread(target=sample_stats, args=(ours, stop, samples)); th.start()
        try: got = run_conversations(ours.port, convs, after=lambda: samples.append(ours.stats()))
        finally: stop.set(); th.join(30)
        final = ours.stats()
    assert [a for a, _ in got] == [a for a, _ in want]
    assert [u["completion_tokens"] for _, u in got] == [u["completion_tokens"] for _, u in want]
    assert sum(u["completion_tokens"] for _, u in got) > 2 * len(got)
    assert final["inserts"] > 0 and final["insert_unquantized"] == 0 and final["prefix_hit_tokens"] > 0, final
    # blocks of quantized K/V: 16 tokens x 2 layers x 2 kv heads x (K, V) x (64 packed bytes + a float32 scale and bias), not 32 KiB of float
    assert [g["block_bytes"] for g in final["groups"]] == [16 * 2 * 2 * 2 * (64 + 2 * 4)]
    assert all(s["cache_nbytes"] <= s["budget_nbytes"] == budget for s in samples + [final])
    assert sum(u["prompt_tokens_details"]["cached_tokens"] for _, u in got) == final["prefix_hit_tokens"]


def test_openai_client_streaming_and_concurrent(models):
    "The openai package against kvspec serve: chat (multi-turn) and completions, streamed and not, four clients at once."
    import openai
    with Server(models["llama"], "kvspec", "--cache-bytes", "8MiB", "--block-tokens", "16") as s:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{s.port}/v1", api_key="none", timeout=120, max_retries=0)
        msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello!"}]
        r = client.chat.completions.create(model="default_model", messages=msgs, max_tokens=6, temperature=0)
        assert r.choices[0].finish_reason in ("length", "stop") and r.usage.completion_tokens >= 1
        msgs += [{"role": "assistant", "content": r.choices[0].message.content}, {"role": "user", "content": "And then?"}]
        r2 = client.chat.completions.create(model="default_model", messages=msgs, max_tokens=6, temperature=0)
        assert r2.usage.prompt_tokens_details.cached_tokens > 0          # the first turn's prefix came from the pool
        chunks = list(client.chat.completions.create(model="default_model", messages=msgs, max_tokens=6, temperature=0, stream=True))
        streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert streamed == r2.choices[0].message.content
        c = client.completions.create(model="default_model", prompt="The quick brown fox", max_tokens=5, temperature=0)
        cs = list(client.completions.create(model="default_model", prompt="The quick brown fox", max_tokens=5, temperature=0, stream=True))
        assert "".join(x.choices[0].text for x in cs if x.choices) == c.choices[0].text
        def one(i):
            m = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Client {i} asks."}]
            return client.chat.completions.create(model="default_model", messages=m, max_tokens=6, temperature=0).choices[0].message.content
        with ThreadPoolExecutor(4) as ex: together = list(ex.map(one, range(4)))
        assert together == [one(i) for i in range(4)]                   # batched answers are the ones served alone
        st = s.stats()
        assert st["blocks_shared"] > 0 and st["cache_nbytes"] <= st["budget_nbytes"]


def test_restart_with_cache_dir_skips_prefill(models, tmp_path):
    "A prompt cached before a restart with the same --cache-dir is not prefilled again."
    d, opts = tmp_path / "cache", ["--cache-bytes", "8MiB", "--block-tokens", "16"]
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello!"}]
    with Server(models["llama"], "kvspec", *opts, "--cache-dir", str(d)) as s:
        first = chat(s.port, msgs)
        deadline = time.monotonic() + 30     # the answer is sent before its prompt is cached, and the writer saves after that
        while (s.stats()["persisted"] == 0 or s.stats()["disk_queue"]) and time.monotonic() < deadline: time.sleep(0.05)
        cold = s.stats()
    assert cold["persisted"] > 0 and cold["prefix_hit_tokens"] == 0
    with Server(models["llama"], "kvspec", *opts, "--cache-dir", str(d)) as s:
        warm = chat(s.port, msgs)
        st = s.stats()
    assert st["loaded"] > 0 and st["skipped_files"] == 0
    assert st["prefill_tokens"] < cold["prefill_tokens"] and warm["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    assert warm["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]


def test_kill9_then_restart_serves(models, tmp_path):
    "kill -9 in the middle of a run, plus a corrupt file: the restarted server loads nothing corrupt and serves."
    d, opts = tmp_path / "cache", ["--cache-bytes", "8MiB", "--block-tokens", "16", "--cache-dir", str(tmp_path / "cache")]
    s = Server(models["gemma3_text"], "kvspec", *opts)
    try:
        def load(i):
            try: post(s.port, "/v1/chat/completions", {"messages": [{"role": "user", "content": f"{SYSTEM} {i}"}], "max_tokens": 30})
            except OSError: pass
        ex = ThreadPoolExecutor(4); [ex.submit(load, i) for i in range(12)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not list(d.glob("e*.safetensors")): time.sleep(0.01)
    finally:
        s.stop(signal.SIGKILL); ex.shutdown(wait=True)
    saved = sorted(d.glob("e*.safetensors"))
    assert saved, "nothing was persisted before the kill"
    raw = bytearray(saved[0].read_bytes()); raw[len(raw) // 2] ^= 0xFF; saved[0].write_bytes(bytes(raw))
    files = sorted(p.name for p in d.iterdir())
    with Server(models["gemma3_text"], "kvspec", *opts) as s2:
        st = s2.stats()
        records = len(list(d.glob("e*.json")))
        assert st["skipped_files"] >= 1 and st["loaded"] <= records - 1, (st, files)   # the corrupt one is never loaded
        assert st["loaded"] + st["skipped_files"] >= records
        assert saved[0].exists()                                           # skipped, not deleted
        out = chat(s2.port, [{"role": "user", "content": f"{SYSTEM} 3"}])
        assert out["choices"][0]["message"]["content"] is not None
    assert saved[0].read_bytes() == bytes(raw)


def test_bad_requests_get_4xx_and_the_server_keeps_serving(models):
    with Server(models["llama"], "kvspec", "--cache-bytes", "1MiB", "--block-tokens", "16") as s:
        code, out = post(s.port, "/v1/chat/completions", None, raw=b'{"messages": [')
        assert code == 400 and "Invalid JSON" in out["error"]["message"]   # kvspec's refusals: the OpenAI API's error shape
        code, out = post(s.port, "/v1/chat/completions", {"model": "no/such-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2})
        assert 400 <= code < 500, (code, out)
        assert chat(s.port, [{"role": "user", "content": "Still there?"}], 3)["usage"]["completion_tokens"] >= 1
        assert get(s.port, "/health") == (200, {"status": "ok"})


LONG_SYSTEM = " ".join(f"Rule {i}: keep every block of the cache exact and the budget whole." for i in range(120))   # ~2,000 tokens


def test_prompts_longer_than_the_cache_are_served_like_stock(models, tmp_path):
    "A 1 MiB cache (2,048 tokens of the demo llama) and a ~2,000-token system prompt: stock mlx_lm.server and kvspec serve both answer every request, token for token alike; kvspec caches what fits."
    convs = [[f"Question {i}.{t}: and what of block {i * 5 + t}?" for t in range(2)] for i in range(3)]
    def play(port):
        out = []
        for turns in convs:
            msgs = [{"role": "system", "content": LONG_SYSTEM}]
            for q in turns:
                msgs.append({"role": "user", "content": q}); r = chat(port, msgs, 6)
                out.append((r["choices"][0]["message"]["content"], r["usage"])); msgs.append({"role": "assistant", "content": out[-1][0]})
        return out
    with Server(models["llama"], "stock", "--prompt-cache-bytes", str(1 << 20)) as stock: want = play(stock.port)
    with Server(models["llama"], "kvspec", "--cache-bytes", "1MiB", "--block-tokens", "16", log=tmp_path / "log.txt") as ours:
        got, st = play(ours.port), ours.stats()
    assert min(u["prompt_tokens"] for _, u in got) > 2048 * 0.8, [u["prompt_tokens"] for _, u in got]   # the system prompt is about the whole cache
    assert [a for a, _ in got] == [a for a, _ in want]
    assert st["inserted_partly"] > 0 and st["prefix_hit_tokens"] > 0 and st["cache_nbytes"] <= st["budget_nbytes"] == 1 << 20, st
    assert st["fetch_failed"] == st["insert_failed"] == 0, st


def test_pool_too_small_for_state_snapshots_keeps_serving(models, tmp_path):
    "A recurrent hybrid in a cache so small its state group holds a few slots: snapshots, cached prompts and new requests fight for them; every request is answered, nothing fails inside the cache."
    # 3 state slots of 11,264 bytes and 60 blocks of 16 tokens (8,192 bytes): two of these ~400-token prompts at a time
    with Server(models["qwen3_next"], "kvspec", "--cache-bytes", str(3 * 11264 + 60 * 8192), "--block-tokens", "16", "--balance-tokens", "320",
                log=tmp_path / "log.txt") as s:
        st0 = s.stats()
        test = {g["group"]: g["blocks_total"] for g in st0["groups"]}
        assert test == {"state": 3, "full": 60}, st0["groups"]
        answers = run_conversations(s.port, conversations(6, 3), max_tokens=4)
        st = s.stats()
        assert len(answers) == 18 and st["inserts"] > 0 and st["evictions"] > 0, st
        assert st["fetch_failed"] == st["insert_failed"] == st["trim_failed"] == 0, st
        assert get(s.port, "/health") == (200, {"status": "ok"})


@pytest.fixture
def small_tmpfs(tmp_path):
    "A 1 MiB tmpfs at tmp_path / 'full' (root only), unmounted afterwards."
    d = tmp_path / "full"; d.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs needs root (the read-only and vanished-directory tests still run)")
    try: yield d
    finally: subprocess.run(["umount", "-l", str(d)], capture_output=True, timeout=30)


def test_cache_dir_on_a_full_filesystem_keeps_serving(models, small_tmpfs, tmp_path):
    "--cache-dir on a 1 MiB filesystem: the first long prompt's save does not fit; it is logged once and counted, and every request is answered."
    with Server(models["llama"], "kvspec", "--cache-bytes", "16MiB", "--block-tokens", "16", "--cache-dir", str(small_tmpfs),
                log=tmp_path / "log.txt") as s:
        msgs = [{"role": "system", "content": LONG_SYSTEM}, {"role": "user", "content": "Hello!"}]
        first = chat(s.port, msgs, 6)
        for i in range(4): chat(s.port, [{"role": "system", "content": f"{i} {LONG_SYSTEM}"}, {"role": "user", "content": "Hi"}], 4)
        again = chat(s.port, msgs, 6)
        deadline = time.monotonic() + 30
        while s.stats()["disk_queue"] and time.monotonic() < deadline: time.sleep(0.1)
        st = s.stats()
        assert st["write_errors"] >= 1 and "ENOSPC" in st["disk_faults"], st
        assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0          # served from memory meanwhile
        assert again["choices"][0]["message"]["content"] == first["choices"][0]["message"]["content"]
        assert st["fetch_failed"] == st["insert_failed"] == 0 and get(s.port, "/health") == (200, {"status": "ok"})
        subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True, timeout=30)   # now read-only as well
        for i in range(2): chat(s.port, [{"role": "system", "content": f"short {i}"}, {"role": "user", "content": "Hi"}], 4)
        deadline = time.monotonic() + 30
        while s.stats()["disk_queue"] and time.monotonic() < deadline: time.sleep(0.1)
        st = s.stats()
        assert "EROFS" in st["disk_faults"] and get(s.port, "/health") == (200, {"status": "ok"}), st
    assert (tmp_path / "log.txt").read_text().count("failed (") == 2                  # each kind logged once, then only counted


def test_cache_dir_read_only_or_removed_mid_run_keeps_serving(models, tmp_path):
    "--cache-dir made unwritable mid-run (a file where the directory was), then removed and written again: every request is answered, saves resume."
    d = tmp_path / "cache"
    with Server(models["llama"], "kvspec", "--cache-bytes", "16MiB", "--block-tokens", "16", "--cache-dir", str(d), log=tmp_path / "log.txt") as s:
        def ask(i): return chat(s.port, [{"role": "system", "content": f"{i} {SYSTEM}"}, {"role": "user", "content": "Hi"}], 4)
        def settled():
            deadline = time.monotonic() + 30
            while s.stats()["disk_queue"] and time.monotonic() < deadline: time.sleep(0.1)
            return s.stats()
        ask(0); st0 = settled(); assert st0["persisted"] >= 1 and st0["write_errors"] == 0, st0
        shutil.rmtree(d); d.write_text("a file where the cache directory was")          # no directory can be made there
        ask(1); ask(2); st = settled()
        assert st["persisted"] == st0["persisted"] and st["write_errors"] >= 2 and "EEXIST" in st["disk_faults"], st
        d.unlink()                                                                      # gone: made again by the next save
        ask(3); st1 = settled()
        assert st1["persisted"] > st["persisted"] and {p.suffix for p in d.iterdir()} == {".json", ".safetensors"}, st1
        shutil.rmtree(d)                                                                # deleted mid-run
        ask(4); st = settled()
        assert st["persisted"] > st1["persisted"] and len(list(d.iterdir())) >= 2, st
        assert st["fetch_failed"] == st["insert_failed"] == 0 and get(s.port, "/health") == (200, {"status": "ok"})


def test_evicted_conversation_comes_back_from_disk(models, tmp_path):
    "A budget so small that a conversation is evicted from memory: with --cache-dir its next turn is loaded from disk, not prefilled."
    opts = ["--cache-bytes", "256KiB", "--block-tokens", "16"]
    def play(port):
        systems = [f"Conversation {i}. {SYSTEM}" for i in range(6)]   # no prefix shared between conversations
        first = [{"role": "system", "content": s} for s in systems]
        msgs = [first[0], {"role": "user", "content": "Hello!"}]
        msgs.append({"role": "assistant", "content": chat(port, msgs)["choices"][0]["message"]["content"]})
        for s in first[1:]: chat(port, [s, {"role": "user", "content": "Hello!"}])   # these push conversation 0 out of memory
        msgs.append({"role": "user", "content": "And then?"})
        return chat(port, msgs)
    with Server(models["llama"], "kvspec", *opts) as s:
        cold, cold_st = play(s.port), s.stats()
    with Server(models["llama"], "kvspec", *opts, "--cache-dir", str(tmp_path / "cache")) as s:
        warm, st = play(s.port), s.stats()
    assert cold_st["evictions"] > 0 and st["evictions"] > 0 and st["disk_hits"] == 1, st
    assert warm["usage"]["prompt_tokens_details"]["cached_tokens"] > cold["usage"]["prompt_tokens_details"]["cached_tokens"] + 100
    assert st["prefill_tokens"] < cold_st["prefill_tokens"] - 100 and st["disk_nbytes"] <= st["cache_dir_bytes"]
    assert warm["choices"][0]["message"]["content"] == cold["choices"][0]["message"]["content"]


def stream_request(port, body, timeout=120):
    "A streamed chat completion read to its end: (status, Retry-After header, text or error body)."
    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=json.dumps(dict(body, stream=True)).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r: return r.status, None, r.read().decode()
    except urllib.error.HTTPError as e: return e.code, e.headers.get("Retry-After"), json.loads(e.read() or b"{}")


def test_memory_governor_under_overload(models, tmp_path):
    "16 concurrent long requests against --memory that holds about 3 at once: MLX's peak never passes the limit, every request ends 200, 503 + Retry-After or 400, none hangs, and the server serves afterwards."
    memory, timeout = 400 << 20, 2
    with Server(models["llama"], "kvspec", "--cache-bytes", "4MiB", "--block-tokens", "16", "--memory", str(memory),
                "--queue-timeout", str(timeout), log=tmp_path / "log.txt") as s:
        st0 = s.stats()
        assert st0["memory_limit_nbytes"] == memory and st0["weights_nbytes"] > 0, st0
        peak_before = st0["mlx_peak_nbytes"]
        code, out = post(s.port, "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 10**6})
        assert code == 400 and out["max_request_tokens"] < 10**6 and "at most" in out["error"], out   # never fits: refused at once,
        assert s.stats()["mlx_peak_nbytes"] == peak_before                                          # nothing allocated for it
        words = "memory blocks cache budget ledger queue rank token".split()
        def ask(i):
            text = " ".join(words[(i + j) % len(words)] for j in range(250 + 20 * i))   # ~900-2,300 tokens each (prefill dominates: ~3 fit)
            body = {"messages": [{"role": "user", "content": text}], "max_tokens": 64, "temperature": 0}
            t0 = time.monotonic()                 # every request is bounded by its client's timeout: a hang fails the test
            if i % 2: code, retry, out = stream_request(s.port, body)
            else:
                code, out = post(s.port, "/v1/chat/completions", body); retry = None
                if code == 503: retry = "present" if "retry_after_s" in out else None
            samples.append(s.stats())
            return code, retry, out, time.monotonic() - t0
        samples = []
        with ThreadPoolExecutor(16) as ex: results = list(ex.map(ask, range(16)))
        codes = [c for c, *_ in results]
        assert set(codes) <= {200, 503, 400}, codes
        assert codes.count(200) >= 3, codes                                               # about 3 fit at once: those never wait
        print(f"200: {codes.count(200)}, 503: {codes.count(503)}, most in flight at a sample: {max(x['inflight_requests'] for x in samples)}, "
              f"MLX peak {max(x['mlx_peak_nbytes'] for x in samples):,} of {memory:,} bytes")
        assert all(r for c, r, *_ in results if c == 503), results                     # every 503 says when to retry
        assert all(x["mlx_peak_nbytes"] <= memory for x in samples), max(x["mlx_peak_nbytes"] for x in samples)
        final = s.stats()
        assert final["inflight_requests"] == 0 and final["queued_requests"] == 0, final
        assert final["admitted_requests"] == codes.count(200), final
        assert chat(s.port, [{"role": "user", "content": "Still there?"}], 4)["usage"]["completion_tokens"] >= 1
        assert s.stats()["mlx_peak_nbytes"] <= memory


def open_request(port, body):
    "A chat request sent on a raw socket and left waiting (the caller closes the socket: its client goes away)."
    data = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(data), data))
    return sock


def wait_for(server, ok, seconds=10):
    "The server's stats once `ok(stats)` holds (bounded: a timeout fails the test with the last stats)."
    deadline = time.monotonic() + seconds
    while True:
        st = server.stats()
        if ok(st) or time.monotonic() > deadline: return st
        time.sleep(0.05)


def test_queued_client_that_goes_away_leaves_the_queue(models, tmp_path):
    "A request queued behind one that holds the memory, whose client then closes its connection, leaves the queue within a second (not when it would have been admitted); the holder's client going stops it; the server serves afterwards."
    with Server(models["llama"], "kvspec", "--cache-bytes", "4MiB", "--memory", str(400 << 20), "--queue-timeout", "60",
                log=tmp_path / "log.txt") as s:
        half = s.stats()["longest_request_tokens"] // 2 + 1          # two such requests never fit at once
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": half, "stream": True}
        holder = open_request(s.port, body)
        st = wait_for(s, lambda st: st["inflight_requests"] == 1)
        assert st["inflight_requests"] == 1, st
        queued = open_request(s.port, body)
        st = wait_for(s, lambda st: st["queued_requests"] == 1)
        assert (st["queued_requests"], st["inflight_requests"]) == (1, 1), st
        queued.close()
        st = wait_for(s, lambda st: st["abandoned_requests"] == 1, seconds=3)
        assert (st["abandoned_requests"], st["queued_requests"], st["inflight_requests"], st["admitted_requests"]) == (1, 0, 1, 1), st
        holder.close()
        st = wait_for(s, lambda st: st["inflight_requests"] == 0, seconds=10)
        assert st["inflight_requests"] == 0 and st["cancelled_requests"] == 1, st
        assert chat(s.port, [{"role": "user", "content": "Still there?"}], 4)["usage"]["completion_tokens"] >= 1
