"""`kvspec serve` against what clients send (issue 16), real server processes on loopback: every bad request of
`kvspec.requests.BAD_REQUESTS` and the HTTP-level ones, another model's directory, an edited cache record, clients that
leave during a long prefill, a 50 MB body, a busy port, a bad --port and --cache-dir, and Ctrl-C.

Times are printed (`pytest -s`) and bounded only generously, against hangs."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from kvspec.demo import demo_model
from kvspec.requests import BAD_REQUESTS, bad_request_body

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_serve import ROOT, SYSTEM, Server, chat, free_port, get, post   # noqa: E402

ENTRY = "import sys; from kvspec.cli import main; sys.exit(main(['serve'] + sys.argv[1:]))"
PATHS = {"chat": "/v1/chat/completions", "text": "/v1/completions"}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    return {"llama": demo_model(d / "llama", "llama"), "llama_seed1": demo_model(d / "llama_seed1", "llama", seed=1),
            "gemma": demo_model(d / "gemma", "gemma3_text")}


def raw_http(port, request: bytes, shutdown_write=False, timeout=30) -> tuple[int, dict]:
    "Send raw bytes as one HTTP request; (status, JSON body) of the answer."
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        if shutdown_write: s.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := s.recv(65536): data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    try: return status, json.loads(body)
    except ValueError: return status, {"raw": body.decode(errors="replace")}


def message(out) -> str:
    "The error message of an answer, in either shape (OpenAI's object, or mlx-lm's and the governor's string)."
    e = out.get("error")
    return e.get("message", "") if isinstance(e, dict) else str(e)


def rss_kib(pid: int) -> dict:
    "VmRSS and VmHWM (peak) of a process, in KiB, from /proc."
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {k: int(fields[k].split()[0]) for k in ("VmRSS", "VmHWM")}


def test_bad_requests_get_4xx_naming_the_field_and_the_server_keeps_serving(models, tmp_path):
    "Every case of BAD_REQUESTS (the issue's, and more of the same kinds) and the HTTP-level ones: a 4xx naming the field; then a good request is answered, the process and its generation thread live on."
    import openai
    answers = []
    with Server(models["llama"], "kvspec", "--cache-bytes", "1MiB", "--block-tokens", "16", "--memory", "16GiB", log=tmp_path / "log.txt") as s:
        for endpoint, fields, status, param in BAD_REQUESTS:
            code, out = post(s.port, PATHS[endpoint], bad_request_body(endpoint, fields))
            answers.append((endpoint, fields, code, message(out)))
            assert (code, out["error"]["param"]) == (status, param), (fields, code, out)
            assert message(out).startswith(param), out
            assert s.proc.poll() is None and get(s.port, "/health") == (200, {"status": "ok"}), fields
        post_raw = lambda headers, body=b"", **kw: raw_http(s.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n" + body, **kw)
        http_cases = [
            ("invalid JSON", lambda: post(s.port, PATHS["chat"], None, raw=b'{"messages": ['), 400, "Invalid JSON in request body"),
            ("not UTF-8", lambda: post(s.port, PATHS["chat"], None, raw=b'\xff\xfe{"messages": []}'), 400, "not UTF-8 text"),
            ("a JSON list", lambda: post(s.port, PATHS["chat"], None, raw=b"[1, 2]"), 400, "must be a JSON object"),
            ("NaN in a message", lambda: post(s.port, PATHS["chat"], None, raw=b'{"messages": [{"role": "user", "content": "x"}], "top_p": NaN}'),
             400, "top_p: must be a finite number"),
            ("nested 100,000 deep", lambda: post(s.port, PATHS["chat"], None, raw=b"[" * 100_000 + b"]" * 100_000), 400, "nested too deeply"),
            ("no Content-Length", lambda: post_raw(b"", shutdown_write=True), 411, "Content-Length header is required"),
            ("Content-Length -5", lambda: post_raw(b"Content-Length: -5\r\n", shutdown_write=True), 400, "is not one byte count"),
            ("Content-Length 12, 2 bytes sent", lambda: post_raw(b"Content-Length: 12\r\n", b"{}", shutdown_write=True), 400, "ended after 2 of its 12 bytes"),
            ("Content-Length above the limit", lambda: post_raw(b"Content-Length: 9000000000\r\n", shutdown_write=True), 413, "--max-request-bytes"),
            ("a prompt past the model's 32,768 positions", lambda: post(s.port, PATHS["text"], {"prompt": "word " * 40_000, "max_tokens": 4}),
             400, "together more than the 32,768 tokens the model takes (max_position_embeddings)"),
            ("max_tokens past the model's positions", lambda: post(s.port, PATHS["chat"], bad_request_body("chat", {"max_tokens": 10**6})),
             400, "leaves no room for a prompt: the model takes 32,768 tokens"),
        ]
        for name, send, status, text in http_cases:
            code, out = send()
            answers.append(("http", name, code, message(out)))
            assert code == status and text in message(out), (name, code, out)
            assert s.proc.poll() is None, name
        code, out = get(s.port, "/v1/models")
        assert code == 200 and [m["id"] for m in out["data"]] == [str(models["llama"])], out
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{s.port}/v1", api_key="none", timeout=60, max_retries=0)
        assert [m.id for m in client.models.list()] == [str(models["llama"])]           # stock answers an empty 200 here, which the client cannot read
        with pytest.raises(openai.BadRequestError, match="stop"):
            client.chat.completions.create(model="default_model", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stop=[""])
        good = chat(s.port, [{"role": "user", "content": "Still there?"}], 4)
        assert good["usage"]["completion_tokens"] >= 1
        assert get(s.port, "/health") == (200, {"status": "ok"}) and s.proc.poll() is None
        st = s.stats()
        assert st["fetch_failed"] == st["insert_failed"] == 0 and st["inflight_requests"] == 0, st
    (tmp_path / "answers.json").write_text(json.dumps(answers, indent=1))
    for where, what, code, msg in answers: print(f"{where:5} {json.dumps(what)[:90]:92} {code} {msg[:150]}")
    print(f"{len(answers)} bad requests, each refused; the server answered a good one after them")


def test_another_model_directory_is_refused(models, tmp_path):
    "A request naming another local model (same shape or not) gets a 404 naming the served one; the served model is never replaced, its cache never holds another's."
    msgs = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello!"}]
    with Server(models["llama"], "kvspec", "--cache-bytes", "4MiB", "--block-tokens", "16", log=tmp_path / "log.txt") as s:
        before = chat(s.port, msgs)["choices"][0]["message"]["content"]
        for other in ("llama_seed1", "gemma"):
            code, out = post(s.port, PATHS["chat"], {"model": str(models[other]), "messages": msgs, "max_tokens": 8})
            assert code == 404 and out["error"]["code"] == "model_not_found" and str(models["llama"]) in out["error"]["message"], out
            print(f"model {other}: {code} {out['error']['message']}")
        code, out = post(s.port, PATHS["chat"], {"model": str(models["llama"]) + "/", "messages": msgs, "max_tokens": 8, "temperature": 0.0})
        assert code == 200 and out["model"] == str(models["llama"]) + "/", out       # the served model by another spelling: answered, echoed
        after = chat(s.port, msgs)
        assert after["choices"][0]["message"]["content"] == before                       # still the served model's answer
        assert after["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
        st = s.stats()
        assert st["fetch_failed"] == st["insert_failed"] == 0 and get(s.port, "/health") == (200, {"status": "ok"}), st


def test_edited_cache_record_is_skipped_and_never_served(models, tmp_path):
    "A saved record whose token ids were edited to claim another prompt (its arrays are the first prompt's): after a restart it is logged, skipped, and never served."
    opts = ["--cache-bytes", "8MiB", "--block-tokens", "16"]
    ask = lambda i: [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Tell me about block {i}."}]   # same length, one token apart
    def saved(d):
        return {json.loads(p.read_text())["cache_type"]: p for p in Path(d).glob("e*.json")}
    with Server(models["llama"], "kvspec", *opts, "--cache-dir", str(tmp_path / "y")) as s:            # the prompt to be impersonated, cached honestly
        want = chat(s.port, ask(2), 8)
    with Server(models["llama"], "kvspec", *opts, "--cache-dir", str(tmp_path / "x")) as s:
        chat(s.port, ask(1), 8)
    y, x = saved(tmp_path / "y")["assistant"], saved(tmp_path / "x")["assistant"]
    ry, rx = json.loads(y.read_text()), json.loads(x.read_text())
    n = want["usage"]["prompt_tokens"]
    forged = ry["tokens"][:n] + rx["tokens"][n:]                  # the other prompt's tokens over these arrays: same length
    assert len(forged) == len(rx["tokens"]) and forged != rx["tokens"]
    x.write_text(json.dumps(dict(rx, tokens=forged)))
    with Server(models["llama"], "kvspec", *opts, "--cache-dir", str(tmp_path / "x"), log=tmp_path / "log.txt") as s:
        st0 = s.stats()
        got = chat(s.port, ask(2), 8)
        st = s.stats()
    log = (tmp_path / "log.txt").read_text()
    print(f"skipped_files {st0['skipped_files']}, loaded {st0['loaded']}; cached tokens for the impersonated prompt "
          f"{got['usage']['prompt_tokens_details']['cached_tokens']} of {n}")
    assert st0["skipped_files"] >= 1 and f"skipping {x.stem}" in log, (st0, log[-2000:])
    assert x.exists()                                                                                   # left on disk
    assert got["choices"][0]["message"]["content"] == want["choices"][0]["message"]["content"]         # never served from the forged record
    assert got["usage"]["prompt_tokens_details"]["cached_tokens"] < n - 8                               # the system prompt at most, never the forged prompt
    assert st["disk_hits"] == 0, st


def _leave_during_prefill(port, body, after_s, stream=False):
    "Send a request on a raw socket and close it `after_s` seconds later, before any answer."
    data = json.dumps(dict(body, stream=stream)).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
    time.sleep(after_s); s.close()


def test_client_leaving_a_long_prefill_is_cancelled(models, tmp_path):
    "A client that disconnects during a long prefill (non-streaming, then streaming) is cancelled at the next chunk: the next client is served within seconds, not after the prefill."
    opts = ["--cache-bytes", "1MiB", "--prefill-step-size", "16", "--prompt-concurrency", "1"]   # one prompt prefilled at a time, in chunks of 16
    long = lambda tag: {"prompt": " ".join(f"{tag}{i}" for i in range(3000)), "max_tokens": 1}   # ~13k demo tokens: ~800 chunks
    short = {"prompt": "The quick brown fox", "max_tokens": 2, "temperature": 0.0}
    with Server(models["llama"], "kvspec", *opts, log=tmp_path / "log.txt") as s:
        t0 = time.monotonic()
        code, out = post(s.port, PATHS["text"], long("a"))
        full_s = time.monotonic() - t0
        assert code == 200, out
        print(f"the long prompt ({out['usage']['prompt_tokens']:,} tokens) alone: {full_s:.1f} s")
        for stream in (False, True):
            leaver = threading.Thread(target=_leave_during_prefill, args=(s.port, long("b" if not stream else "c"), 1.0, stream))
            leaver.start(); leaver.join()
            t0 = time.monotonic()
            code, out = post(s.port, PATHS["text"], short)                                   # waits for the prefill slot unless the leaver was stopped
            waited = time.monotonic() - t0
            print(f"{'streaming' if stream else 'non-streaming'} client left after 1 s: the next client answered in {waited:.2f} s")
            assert code == 200 and waited < 10 and waited < full_s / 3, (waited, full_s)   # generous bounds: a hang, or a prefill run out
        deadline = time.monotonic() + 30
        while s.stats()["cancelled_requests"] < 2 and time.monotonic() < deadline: time.sleep(0.1)
        st = s.stats()
        assert st["cancelled_requests"] == 2 and st["inflight_requests"] == 0, st
        assert get(s.port, "/health") == (200, {"status": "ok"})


def test_50mb_body_refused_fast_with_bounded_memory(models, tmp_path):
    "A 50 MB body is refused (413) before it is read: in well under a second, the server's memory unchanged (RSS peak from /proc, MLX's active bytes)."
    body = b'{"messages": [{"role": "user", "content": "' + b"x" * (50 << 20) + b'"}]}'
    with Server(models["llama"], "kvspec", "--cache-bytes", "1MiB", log=tmp_path / "log.txt") as s:
        chat(s.port, [{"role": "user", "content": "Hi"}], 2)
        before, mlx_before = rss_kib(s.proc.pid), s.stats()["mlx_active_nbytes"]
        t0 = time.monotonic()
        req = urllib.request.Request(f"http://127.0.0.1:{s.port}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
        with pytest.raises(urllib.error.HTTPError) as e: urllib.request.urlopen(req, timeout=60)
        took = time.monotonic() - t0
        answer = json.loads(e.value.read())
        after, mlx_after = rss_kib(s.proc.pid), s.stats()["mlx_active_nbytes"]
        print(f"50 MB body: {e.value.code} in {took:.3f} s; server RSS {before['VmRSS'] / 1024:.1f} -> {after['VmRSS'] / 1024:.1f} MiB, "
              f"peak {before['VmHWM'] / 1024:.1f} -> {after['VmHWM'] / 1024:.1f} MiB; MLX active {mlx_before:,} -> {mlx_after:,} bytes; "
              f"{answer['error']['message']}")
        assert e.value.code == 413 and "--max-request-bytes" in answer["error"]["message"]
        assert took < 10, took                                               # generous: the 50 MB took 96 s
        assert after["VmHWM"] - before["VmHWM"] < 16 << 10, (before, after)  # the body (50 MiB) was never held
        assert mlx_after == mlx_before
        assert chat(s.port, [{"role": "user", "content": "Hi"}], 2)["usage"]["completion_tokens"] >= 1


def run_serve(*args, timeout=120):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", ENTRY, *args, "--log-level", "WARNING"], capture_output=True, text=True, timeout=timeout, env=env)
    return r, time.monotonic() - t0


def test_busy_port_bad_port_bad_cache_dir_exit_cleanly(models):
    "A port in use: one line, exit 1, the process gone; --port 99999 and a --cache-dir that cannot be made: a usage/kvspec error, no traceback."
    busy = socket.socket(); busy.bind(("127.0.0.1", 0)); busy.listen()
    try:
        r, took = run_serve("--model", str(models["llama"]), "--port", str(busy.getsockname()[1]), "--cache-bytes", "1MiB")
    finally: busy.close()
    print(f"busy port: exit {r.returncode} in {took:.1f} s: {r.stderr.strip()}")
    assert r.returncode == 1 and "the address is in use" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r, _ = run_serve("--model", str(models["llama"]), "--port", "99999")
    print(f"--port 99999: exit {r.returncode}: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 2 and "'99999' is not a TCP port" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r, _ = run_serve("--model", str(models["llama"]), "--port", str(free_port()), "--cache-bytes", "1MiB", "--cache-dir", "/etc/passwd")
    print(f"--cache-dir /etc/passwd: exit {r.returncode}: {r.stderr.strip()}")
    assert r.returncode == 2 and "--cache-dir /etc/passwd: cannot use it as a cache directory" in r.stderr and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_exits_0(models, tmp_path, sig):
    "SIGINT (Ctrl-C) or SIGTERM (kill, launchd, systemd) while serving, after a request, with --cache-dir: exit 0, no abort at interpreter exit, the request's prompt saved."
    log = tmp_path / "log.txt"
    s = Server(models["llama"], "kvspec", "--cache-bytes", "1MiB", "--cache-dir", str(tmp_path / "cache"), log=log)
    try:
        chat(s.port, [{"role": "user", "content": "Hi"}], 4)
        s.proc.send_signal(sig)
        code = s.proc.wait(60)
    finally: s.stop()
    saved = list((tmp_path / "cache").rglob("*.safetensors"))
    print(f"{sig.name}: exit {code}, {len(saved)} saved prompts")
    assert code == 0 and "terminate called" not in log.read_text(), log.read_text()[-2000:]
    assert saved, log.read_text()[-2000:]
