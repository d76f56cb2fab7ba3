"""`kvspec serve` across machines, on real ranks: `mlx.launch --backend ring -n 2 --hosts 127.0.0.1` runs the server on two
local processes (rank 0 serves HTTP, both run mlx-lm's generation loop), as a user runs it across Macs. Stock `mlx_lm.server`
runs under the same launch and sharding where answers are compared. Every launch is bounded in time and stopped in `finally`
(SIGINT to its process group, then SIGKILL); the ring's ports are chosen free for each launch."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from kvspec.demo import demo_model
from kvspec.shard import rank_spec

ROOT = Path(__file__).resolve().parent.parent
SYSTEM = ("You are a careful assistant. " + "The quick brown fox jumps over the lazy dog. " * 12).strip()
QUESTIONS = [[f"Question {i}.{t}: tell me about blocks and caches number {i * 7 + t}." for t in range(2)] for i in range(3)]
BLOCK = 16


def free_port(pair=False) -> int:
    "A free loopback port (and the one after it free too, if `pair`: the ring's two ranks listen on both)."
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]
        if not pair: return p
        if p < 65535:
            try:
                with socket.socket() as s: s.bind(("127.0.0.1", p + 1))
                return p
            except OSError: pass
    raise RuntimeError("no free pair of ports")


def launcher():
    exe = Path(sys.executable)
    path = shutil.which("mlx.launch", path=str(exe.parent)) or shutil.which("mlx.launch")
    assert path, "mlx.launch is not installed beside this python"
    return path


class Group:
    "Two ranks under mlx.launch: `kvspec serve` (kind 'kvspec', as `python -m kvspec serve`) or stock `mlx_lm.server` ('stock')."
    def __init__(self, model, kind="kvspec", *extra, log=None, wait=True):
        self.port, self.log_path = free_port(), log
        entry = ["-m", "kvspec", "serve"] if kind == "kvspec" else ["-m", "mlx_lm", "server"]
        self.cmd = [launcher(), "--backend", "ring", "-n", "2", "--hosts", "127.0.0.1", "--starting-port", str(free_port(pair=True)),
                    "--python", sys.executable, *entry, "--model", str(model), "--port", str(self.port), "--log-level", "WARNING", *extra]
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.out = open(log, "w") if log else open(os.devnull, "w")
        self.proc = subprocess.Popen(self.cmd, env=env, stdout=self.out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, cwd=str(ROOT))
        if not wait: return
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.stop(); raise AssertionError(f"mlx.launch exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            try:
                if get(self.port, "/health")[0] == 200: return
            except OSError: time.sleep(0.3)
        self.stop(); raise TimeoutError(f"the group did not come up in 150 s:\n{self.text()[-3000:]}")

    def text(self) -> str:
        return Path(self.log_path).read_text(errors="replace") if self.log_path else ""

    def wait_exit(self, timeout=90) -> bool:
        "Whether mlx.launch and every rank exited by themselves within `timeout` seconds."
        try: self.proc.wait(timeout); return True
        except subprocess.TimeoutExpired: return False
        finally: self.stop()

    def stop(self):
        if self.proc.poll() is None:
            try: os.killpg(self.proc.pid, signal.SIGINT)
            except ProcessLookupError: pass
            try: self.proc.wait(20)
            except subprocess.TimeoutExpired: pass
        try: os.killpg(self.proc.pid, signal.SIGKILL)          # anything left of the group (a rank the launcher lost)
        except (ProcessLookupError, PermissionError): pass
        try: self.proc.wait(20)
        except subprocess.TimeoutExpired: pass
        self.out.close()

    def __enter__(self): return self
    def __exit__(self, *exc): self.stop()

    def stats(self): return get(self.port, "/kvspec/stats")[1]

    def client(self):
        import openai
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="none", timeout=120, max_retries=0)


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r: return r.status, json.loads(r.read())


def play(group, questions=QUESTIONS, max_tokens=8):
    "Multi-turn chats through the openai client (a shared system prompt, each answer fed back): (answer, completion tokens, cached tokens) per turn."
    client, out = group.client(), []
    for turns in questions:
        msgs = [{"role": "system", "content": SYSTEM}]
        for q in turns:
            msgs.append({"role": "user", "content": q})
            r = client.chat.completions.create(model="default_model", messages=msgs, max_tokens=max_tokens, temperature=0)
            a = r.choices[0].message.content
            out.append((a, r.usage.completion_tokens, r.usage.prompt_tokens_details.cached_tokens))
            msgs.append({"role": "assistant", "content": a})
    return out


def block_nbytes(model, **ranks) -> int:
    "Bytes of one pool block of a rank's caches (full attention: every cache's slot bytes, BLOCK tokens), from kvspec.shard.rank_spec."
    return BLOCK * sum(c.slot_bytes for c in rank_spec(model, **ranks).spec.caches)


def check_ranks_held(st, blocks: list[int]):
    "Each rank's held bytes are its blocks in use at its own rank spec's block bytes; every rank holds the same blocks; no disagreement."
    ranks = st["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["blocks_used"] == ranks[1]["blocks_used"] and ranks[0]["blocks_used"][0] > 0, ranks
    for r, b in zip(ranks, blocks):
        assert r["held_nbytes"] == r["blocks_used"][0] * b, (r, b)
        assert r["storage_nbytes"] <= st["budget_nbytes"]
        assert r["rank_disagreements"] == 0
    assert [r["prefix_hit_tokens"] for r in ranks] == [st["prefix_hit_tokens"]] * 2 and st["prefix_hit_tokens"] > 0


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("demo")
    return dict(llama=demo_model(d / "llama", "llama"), qwen2=demo_model(d / "qwen2", "qwen2"),
                qwen2_one=demo_model(d / "qwen2_one", "qwen2", overrides={"num_hidden_layers": 1}))


OPTS = ["--cache-bytes", "2MiB", "--block-tokens", str(BLOCK), "--balance-tokens", "256"]


def test_tensor_parallel_like_stock(models, tmp_path):
    "Tensor parallel (the demo llama's 2 KV heads, one per rank): greedy answers token for token as stock mlx_lm.server under the same launch."
    with Group(models["llama"], "stock", log=tmp_path / "stock.txt") as stock: want = play(stock)
    with Group(models["llama"], "kvspec", *OPTS, log=tmp_path / "ours.txt") as ours:
        got = play(ours); st = ours.stats()
    assert [(a, n) for a, n, _ in got] == [(a, n) for a, n, _ in want]
    assert sum(n for _, n, _ in got) > 2 * len(got)
    assert all(c > 0 for _, _, c in got[1:]), got               # every turn after the first finds its prefix (the system prompt at least)
    assert st["parallel"] == "tp" and st["group_size"] == 2
    check_ranks_held(st, [block_nbytes(models["llama"], tp_size=2, tp_rank=r) for r in range(2)])
    assert sum(c for _, _, c in got) == st["prefix_hit_tokens"]


@pytest.fixture(scope="module")
def pipeline_run(models, tmp_path_factory):
    "Pipeline parallel, mlx-lm's even split (2 + 2 layers): stock's answers, kvspec's answers and stats, and kvspec's cache directory."
    d = tmp_path_factory.mktemp("pp")
    with Group(models["qwen2"], "stock", "--pipeline", log=d / "stock.txt") as stock: want = play(stock)
    with Group(models["qwen2"], "kvspec", "--pipeline", *OPTS, "--cache-dir", str(d / "cache"), log=d / "ours.txt") as ours:
        got = play(ours); st = ours.stats()
        deadline = time.monotonic() + 30                        # both ranks' writers finish their files
        while time.monotonic() < deadline and not (saved(d / "cache", 0) and saved(d / "cache", 0) == saved(d / "cache", 1)): time.sleep(0.2)
    return dict(want=want, got=got, stats=st, cache=d / "cache")


def saved(cache: Path, rank: int) -> list[str]:
    "The saved prompts' ids in a rank's cache directory (complete: record and arrays)."
    d = cache / f"rank{rank}"
    return sorted(p.stem for p in d.glob("e*.json") if (d / f"{p.stem}.safetensors").exists()) if d.exists() else []


def test_pipeline_parallel_like_stock(models, pipeline_run):
    "Pipeline parallel (the demo qwen2, 2 + 2 layers): greedy answers token for token as stock mlx_lm.server --pipeline under the same launch."
    got, want, st = pipeline_run["got"], pipeline_run["want"], pipeline_run["stats"]
    assert [(a, n) for a, n, _ in got] == [(a, n) for a, n, _ in want]
    assert all(c > 0 for _, _, c in got[1:]), got
    assert (st["parallel"], st["pipeline_split"]) == ("pp", [2, 2])
    check_ranks_held(st, [block_nbytes(models["qwen2"], pp_size=2, pp_rank=r) for r in range(2)])
    cache = pipeline_run["cache"]
    assert saved(cache, 0) and saved(cache, 0) == saved(cache, 1)   # each rank its own directory, the same prompts under the same ids


def test_uneven_split_auto_like_even(models, pipeline_run, tmp_path):
    "Ranks of different declared memory, --pipeline-split auto: 3 + 1 layers; the same answers as the even split; each rank's MLX peak within its own limit."
    mem = (1030 << 20, 1000 << 20)
    with Group(models["qwen2"], "kvspec", "--pipeline", "--pipeline-split", "auto", "--memory", f"{mem[0]},{mem[1]}", *OPTS,
               log=tmp_path / "ours.txt") as ours:
        got = play(ours); st = ours.stats()
    assert st["pipeline_split"] == [3, 1]                       # the larger machine (rank 0) runs 3 of the 4 layers
    assert [(a, n) for a, n, _ in got] == [(a, n) for a, n, _ in pipeline_run["got"]]
    assert [L["memory_limit_nbytes"] for L in st["rank_ledgers"]] == list(mem)
    assert [L["weights_nbytes"] for L in st["rank_ledgers"]] == [rank_spec(models["qwen2"], pp_size=2, pp_rank=r, pp_split=[3, 1]).weights.nbytes
                                                                 for r in range(2)]
    for r, L in zip(st["ranks"], st["rank_ledgers"]): assert 0 < r["mlx_peak_nbytes"] <= L["memory_limit_nbytes"], (r, L)
    check_ranks_held(st, [block_nbytes(models["qwen2"], pp_size=2, pp_rank=r, pp_split=[3, 1]) for r in range(2)])
    assert st["ranks"][0]["storage_nbytes"] == 3 * st["ranks"][1]["storage_nbytes"]   # the same blocks, 3 layers' bytes against 1


def test_restart_with_cache_dir_and_a_file_bad_on_one_rank(models, pipeline_run, tmp_path):
    "Restarted on the same --cache-dir: the prompts saved on both ranks load on both, and the repeated prefix is not prefilled again on any rank; a file corrupt on rank 1 only is skipped by both, and they still agree and answer as before."
    cache = tmp_path / "cache"; shutil.copytree(pipeline_run["cache"], cache)
    ids = saved(cache, 1)
    assert len(ids) >= 2, ids
    keys = {s: tuple(json.loads((cache / "rank1" / f"{s}.json").read_text())["tokens"]) for s in ids}
    bad = max(ids, key=lambda s: len(keys[s]))                 # one conversation's prompt, bad on rank 1 only
    f = cache / "rank1" / f"{bad}.safetensors"; raw = bytearray(f.read_bytes()); raw[len(raw) // 2] ^= 0xFF; f.write_bytes(bytes(raw))
    with Group(models["qwen2"], "kvspec", "--pipeline", *OPTS, "--cache-dir", str(cache), log=tmp_path / "ours.txt") as ours:
        start = ours.stats()
        got = play(ours, [[q[0]] for q in QUESTIONS])           # each conversation's first turn again
        st = ours.stats()
    assert [r["loaded"] for r in start["ranks"]] == [len(ids) - 1] * 2, start["ranks"]    # the bad one on neither rank
    assert [r["skipped_files"] for r in start["ranks"]] == [1, 1]                         # rank 1: corrupt; rank 0: agreed
    first_turns = [pipeline_run["got"][2 * i] for i in range(len(QUESTIONS))]
    assert [(a, n) for a, n, _ in got] == [(a, n) for a, n, _ in first_turns]
    assert all(c > 0 for _, _, c in got), got                   # nothing prefilled again that a saved prompt holds, on either rank
    assert [r["prefix_hit_tokens"] for r in st["ranks"]] == [sum(c for _, _, c in got)] * 2
    assert all(r["rank_disagreements"] == 0 for r in st["ranks"]) and f.exists()


def bad_start(model, *args, tmp_path, name):
    "A launch that must stop at start: (every rank's exit code, the output)."
    log = tmp_path / f"{name}.txt"
    g = Group(model, "kvspec", *args, log=log, wait=False)
    assert g.wait_exit(90), f"{name}: a rank was left running:\n{g.text()[-3000:]}"
    text = g.text()
    codes = {int(r): int(c) for r, c in re.findall(r"Node with rank (\d+) exited with code (-?\d+)", text)}
    return codes, text


@pytest.mark.parametrize("name,model,args,message", [
    ("split_sum", "qwen2", ["--pipeline", "--pipeline-split", "3,2"], "the split [3, 2] adds up to 5 layers; the model has 4"),
    ("split_zero", "qwen2", ["--pipeline", "--pipeline-split", "4,0"], "gives rank 1 0 layers: every rank runs a positive whole number of layers"),
    ("more_ranks", "qwen2_one", ["--pipeline"], "2 pipeline ranks for 1 layers"),
    ("no_pipeline", "llama", ["--pipeline"], "llama.Model has no model.pipeline(group) in mlx-lm"),
    ("cache_rank0", "qwen2", ["--pipeline", "--pipeline-split", "3,1", "--cache-bytes", "8KiB", "--block-tokens", "16"],
     "rank 0 (layers 1-3): --cache-bytes 8.00 KiB is too small"),
    ("memory_rank1", "qwen2", ["--pipeline", "--memory", "2GiB,8MiB", "--cache-bytes", "1MiB"], "rank 1 (pp1/tp0, layers 0-1): its memory 8.00 MiB cannot hold"),
])
def test_bad_input_stops_every_rank(models, tmp_path, name, model, args, message):
    "Bad input: a clear message at start, printed once (by rank 0), and every rank exits with a non-zero code — none left waiting."
    codes, text = bad_start(models[model], *args, tmp_path=tmp_path, name=name)
    assert text.count(message) == 1, text[-3000:]
    assert "kvspec: error: " in text.split(message)[0].splitlines()[-1], text[-3000:]
    # rank 0 prints kvspec's error and exits 2; rank 1 meets the same error and leaves rank 0 the time to: it exits 2, or is stopped
    # by mlx.launch (SIGTERM), which stops every rank once one exits non-zero
    assert codes[0] == 2 and codes[1] in (2, -signal.SIGTERM), (codes, text[-3000:])
    assert "Traceback" not in text, text[-3000:]
