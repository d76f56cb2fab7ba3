"""Real ranks: `mlx.launch --backend ring -n 2 --hosts 127.0.0.1` runs tests/rank_worker.py on two local processes.

Every architecture in kvspec/tiny_configs.json that mlx-lm can shard (tensor parallel: `model.shard`; pipeline:
`model.model.pipeline`) is built with random weights on both ranks, split by mlx-lm over the real 2-rank group, and
decoded greedily. Each rank's real cache bytes (after the prefill and after every decode step) and real parameter bytes
must equal kvspec.shard.rank_spec's prediction for that rank, and each rank's tokens must equal the single-process output.
An architecture whose unsharded model cannot run on this backend at all is listed as refused, with the reason.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import kvspec
from kvspec.config import KVSpecError
from kvspec.probe import weightless_model
from kvspec.shard import rank_spec, sharding_support

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import rank_worker  # noqa: E402  (the same build / decode code the ranks run)
from test_serve_ranks import free_port  # noqa: E402  (the ring's ports: a free pair, not mlx.launch's fixed default)

TINY = json.loads((Path(kvspec.__file__).parent / "tiny_configs.json").read_text())
OVERRIDES = {"qwen2": dict(num_key_value_heads=2)}  # the tiny qwen2 has 1 KV head: it does not divide over 2 ranks
PROMPT, STEPS, SEED, SIZE = list(range(1, 12)), 4, 0, 2
MUST = {"llama/tp", "qwen2/tp", "gpt_oss/tp", "deepseek_v3/pp", "glm4_moe/pp"}


def cases():
    "(cases to launch, predictions per case and rank, refusals) for every shardable tiny architecture."
    run, predicted, refused, reference = [], {}, {}, {}
    for name, cfg in TINY.items():
        cfg = {k: v for k, v in dict(cfg, **OVERRIDES.get(name, {})).items() if k != "quantization"}  # the ranks hold random float weights
        try: support = sharding_support(weightless_model(cfg))
        except Exception as e:  # prism_hadamard_qwen35 cannot be built without its 2-bit quantization
            refused[name] = f"{type(e).__name__}: {e}"; continue
        for mode in ("tp", "pp"):
            if not support[mode]: continue
            key = f"{name}/{mode}"
            sizes = dict(tp_size=SIZE) if mode == "tp" else dict(pp_size=SIZE)
            rank_of = "tp_rank" if mode == "tp" else "pp_rank"
            try:
                specs = [rank_spec(cfg, **sizes, **{rank_of: r}) for r in range(SIZE)]
                chunks = [len(PROMPT)] + [1] * STEPS
                predicted[key] = [dict(params=s.weights.nbytes, caches=[c.nbytes_after(chunks) for c in s.spec.caches]) for s in specs]
            except KVSpecError as e:
                refused[key] = str(e); continue
            if name not in reference:
                try: reference[name] = rank_worker.decode(rank_worker.build(cfg, SEED), PROMPT, STEPS)[0]
                except Exception as e:  # cannot run on this backend at all (muse_spark's Metal-only kernel on CPU)
                    reference[name] = f"{type(e).__name__}: {e}"
            if isinstance(reference[name], str):
                refused[key] = f"the unsharded model cannot run here: {reference[name]}"; continue
            run.append(dict(name=key, config=cfg, mode=mode, prompt=PROMPT, steps=STEPS, seed=SEED, reference=reference[name]))
    return run, predicted, refused


def launch(case_list, out: Path, timeout=420):
    "Run the worker on 2 loopback ranks; kill the whole process group whatever happens."
    exe = Path(sys.executable)
    launcher = shutil.which("mlx.launch", path=str(exe.parent)) or shutil.which("mlx.launch")
    assert launcher, "mlx.launch is not installed beside this python"
    (out / "cases.json").write_text(json.dumps(case_list))
    cmd = [launcher, "--backend", "ring", "-n", str(SIZE), "--hosts", "127.0.0.1", "--starting-port", str(free_port(pair=True)), "--python", str(exe),
           str(HERE / "rank_worker.py"), str(out / "cases.json"), str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=os.name != "nt")
    try:
        log, _ = p.communicate(timeout=timeout)
    finally:
        if p.poll() is None:
            if os.name != "nt": os.killpg(p.pid, signal.SIGKILL)
            else: p.kill()
            p.communicate()
    assert p.returncode == 0, f"mlx.launch exited {p.returncode}:\n{log[-4000:]}"
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(SIZE)]


@pytest.fixture(scope="module")
def ranks():
    run, predicted, refused = cases()
    with tempfile.TemporaryDirectory() as d:
        reports = launch(run, Path(d))
    return run, predicted, refused, reports


def test_every_shardable_architecture_ran(ranks):
    run, _, refused, reports = ranks
    names = {c["name"] for c in run}
    assert MUST <= names, MUST - names
    assert len(names) >= 30, sorted(names)
    for rep in reports:
        assert rep["size"] == SIZE
        errors = {c["name"]: c["error"] for c in rep["cases"] if "error" in c}
        assert not errors, errors
    # what kvspec refuses, it refuses by name (a clear kvspec error, not a traceback)
    assert all(refused.values())
    print(f"{len(names)} cases on real ranks; refused:", json.dumps(refused, indent=1))


def test_prediction_equals_each_real_rank(ranks):
    run, predicted, _, reports = ranks
    wrong = []
    for i, case in enumerate(run):
        for r, rep in enumerate(reports):
            real, want = rep["cases"][i], predicted[case["name"]][r]
            assert real["name"] == case["name"]
            if real["params_nbytes"] != want["params"]: wrong.append((case["name"], r, "params", real["params_nbytes"], want["params"]))
            per_cache = [list(col) for col in zip(*real["cache_nbytes"])]
            if per_cache != want["caches"]: wrong.append((case["name"], r, "caches", per_cache, want["caches"]))
    assert not wrong, wrong


def test_tokens_match_single_process(ranks):
    run, _, _, reports = ranks
    wrong = []
    for i, case in enumerate(run):
        tokens = case["reference"]  # the single-process output of the same seeded model
        wrong += [(case["name"], rep["rank"], rep["cases"][i]["tokens"], tokens) for rep in reports if rep["cases"][i]["tokens"] != tokens]
    assert not wrong, wrong
