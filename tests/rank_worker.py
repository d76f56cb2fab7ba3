"""One real rank of `mlx.launch`: build tiny random-weight models, shard them with mlx-lm, decode, report what is held.

Launched by tests/test_ranks.py as `mlx.launch --backend ring -n 2 --hosts 127.0.0.1 --python PY rank_worker.py CASES OUT`.
CASES is a JSON file: a list of {"name", "config", "mode" ("tp" | "pp"), "prompt", "steps", "seed"}.
Each rank writes OUT/rank<r>.json: per case the bytes of every real cache after each call, the bytes of the
parameters it holds, and the greedy tokens it decoded. Only mlx and mlx-lm are used here: nothing of kvspec.
"""
import json
import sys
import traceback
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.models import cache as mlx_cache
from mlx_lm.utils import _get_classes


def build(config: dict, seed: int):
    "The random-weight model every process builds identically for `config` and `seed`."
    model_cls, args_cls = _get_classes(config)
    mx.random.seed(seed)
    model = model_cls(args_cls.from_dict(config))
    mx.eval(model.parameters())
    return model


def decode(model, prompt: list[int], steps: int):
    "Greedy decoding, recording the caches' bytes after each call."
    cache = mlx_cache.make_prompt_cache(model)
    tokens, per_call, x = [], [], mx.array([prompt], dtype=mx.int32)
    for _ in range(steps + 1):
        logits = model(x, cache=cache)
        nxt = mx.argmax(logits[:, -1, :], axis=-1)
        mx.eval(nxt, [c.state for c in cache])
        per_call.append([c.nbytes for c in cache])
        tokens.append(int(nxt.item()))
        x = nxt[:, None].astype(mx.int32)
    return tokens[:steps], per_call


def run_case(case: dict, group) -> dict:
    model = build(case["config"], case["seed"])
    if case["mode"] == "tp": model.shard(group)
    else: model.model.pipeline(group)
    mx.eval(model.parameters())
    params = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    tokens, per_call = decode(model, case["prompt"], case["steps"])
    return dict(name=case["name"], params_nbytes=params, tokens=tokens, cache_nbytes=per_call)


def main(cases_path: str, out_dir: str):
    group = mx.distributed.init(strict=True)
    cases, out = json.loads(Path(cases_path).read_text()), []
    for case in cases:
        try: out.append(run_case(case, group))
        except Exception:
            out.append(dict(name=case["name"], error=traceback.format_exc(limit=3)))
    Path(out_dir, f"rank{group.rank()}.json").write_text(json.dumps(dict(rank=group.rank(), size=group.size(), cases=out)))


if __name__ == "__main__":
    main(*sys.argv[1:3])
