#!/usr/bin/env python
"""Survey check for kvspec/tiny_configs.json.

For every entry {module_name: config} of the tiny-config survey this script

* checks that ``mlx_lm.utils._get_classes(config)`` resolves to that module,
* builds ``Model(ModelArgs.from_dict(config))`` after ``mx.random.seed(0)``,
* casts the parameters the way ``mlx_lm/convert.py`` does (floating params are
  cast unless ``model.cast_predicate(path)`` says no),
* calls ``make_prompt_cache(model)`` and feeds token chunks [20] then [1]
  (input: ``mx.array`` of token ids, shape ``(batch, n)``), batch 1 and 2,
  float32 and bfloat16, evaluating logits and every cache array for real,
* prints cache count vs number of layers, each cache's class, its arrays'
  shapes/dtypes, offset and ``nbytes`` (and flags caches whose ``nbytes``
  does not count every array they hold),
* for models without ``make_cache``: checks that
  ``make_prompt_cache(model, max_kv_size=8)`` gives RotatingKVCache(8).

Backend limits are not failures: on CPU, ``gather_mm`` (every SwitchGLU/MoE layer)
only supports float32, so bfloat16 MoE runs are reported lazily (shapes/dtypes from
the graph, no evaluation) with a note. Models whose forward calls a Metal-only kernel
(bitnet, muse_spark) run, where Metal is missing, under kvspec.probe.lazy_stand_ins
(lazy zeros of the kernel's declared output shapes) and are likewise reported lazily;
where Metal runs they run for real. Models in STEPWISE get their prefill fed token by token.
olmo's module is imported with kvspec.probe.import_stand_ins (it exits without ai2-olmo).

Exit status is non-zero when any model fails; the failures are listed at the end.

Usage: python tools/survey_check.py [--configs PATH] [--only a,b,c] [--quiet]
"""
import argparse
import contextlib
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import mlx.core as mx  # noqa: E402
from mlx.utils import tree_flatten, tree_map_with_path  # noqa: E402
from mlx_lm.models import cache as cache_mod  # noqa: E402
from mlx_lm.models.cache import make_prompt_cache  # noqa: E402
from mlx_lm.utils import _get_classes  # noqa: E402

from kvspec.probe import METAL_KERNELS, import_stand_ins, lazy_stand_ins  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = ROOT / "kvspec" / "tiny_configs.json"
CHUNKS = (20, 1)
BATCHES = (1, 2)
DTYPES = (("float32", mx.float32), ("bfloat16", mx.bfloat16))
DT = {mx.float32: "f32", mx.bfloat16: "bf16", mx.float16: "f16", mx.uint32: "u32",
      mx.int32: "i32", mx.int64: "i64", mx.bool_: "bool", mx.uint8: "u8"}


# Models whose multi-token forward is broken in mlx-lm (checked: 0.32.2); we feed the
# 20-token chunk one token at a time so their cache geometry can still be surveyed.
STEPWISE = {
    "olmo": "olmo.py adds the string mask 'causal' to the scores (scores += mask) for L>1",
}
STOOD_IN = {f"{m}.{n}" for m, n in METAL_KERNELS}


def metal_only_kernels(model):
    "The Metal-only kernels the model's forward calls that cannot run here ([] where Metal runs)."
    with lazy_stand_ins(model) as stood_in:
        model(mx.zeros((1, 1), dtype=mx.int32), cache=make_prompt_cache(model))
    return sorted(set(stood_in) & STOOD_IN)


def cast_model(model, dtype):
    "Cast floating parameters like mlx_lm.convert does (respecting cast_predicate)."
    pred = getattr(model, "cast_predicate", lambda _: True)

    def set_dtype(k, v):
        if pred(k) and mx.issubdtype(v.dtype, mx.floating):
            return v.astype(dtype)
        return v

    model.update(tree_map_with_path(set_dtype, model.parameters()))


def is_cache(x):
    return isinstance(x, cache_mod._BaseCache) or (
        hasattr(x, "update_and_fetch") or hasattr(x, "nbytes")
    ) and not isinstance(x, mx.array)


def own_arrays(c):
    "(name, array) for every mx.array held directly by cache object c (not child caches)."
    out = []
    for k, v in vars(c).items():
        if isinstance(v, mx.array):
            out.append((k, v))
        elif isinstance(v, (list, tuple, dict)):
            for p, a in tree_flatten(v, is_leaf=lambda x: not isinstance(x, (list, tuple, dict))):
                if isinstance(a, mx.array):
                    out.append((f"{k}.{p}", a))
    return out


def child_caches(c):
    out = []
    for k, v in vars(c).items():
        if isinstance(v, (list, tuple)):
            for i, x in enumerate(v):
                if is_cache(x):
                    out.append((f"{k}[{i}]", x))
        elif is_cache(v) and not isinstance(v, (int, float, str)):
            out.append((k, v))
    return out


def all_arrays(c):
    arrs = list(own_arrays(c))
    for _, ch in child_caches(c):
        arrs += all_arrays(ch)
    return arrs


def fmt_arr(name, a):
    return f"{name}{tuple(a.shape)}{DT.get(a.dtype, str(a.dtype))}"


def describe(c, indent="    ", label=""):
    "Lines describing one cache (recursing into child caches)."
    name = type(c).__name__
    bits = [f"{label}{name}"]
    for attr in ("offset", "max_size", "keep", "chunk_size", "start_position", "_idx"):
        v = getattr(c, attr, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            bits.append(f"{attr}={v}")
        elif isinstance(v, mx.array) and v.size == 1 and attr == "offset":
            bits.append(f"{attr}={v.item()}")
    arrs = own_arrays(c)
    bits += [fmt_arr(n, a) for n, a in arrs]
    try:
        nb = c.nbytes
    except Exception as e:  # noqa: BLE001
        nb = f"ERR({type(e).__name__})"
    total = sum(a.nbytes for _, a in all_arrays(c))
    bits.append(f"nbytes={nb}")
    if nb != total:
        bits.append(f"!! arrays_total={total}")
    lines = [indent + " ".join(bits)]
    for lab, ch in child_caches(c):
        lines += describe(ch, indent + "  ", label=f"{lab}: ")
    return lines


def short(c):
    "Short class code for the layer pattern line."
    n = type(c).__name__
    return {"KVCache": "K", "RotatingKVCache": "R", "ArraysCache": "A", "ChunkedKVCache": "C",
            "CacheList": "L", "QuantizedKVCache": "Q", "MambaCache": "M"}.get(n, n)


class LazyOnly(Exception):
    "Raised when real evaluation is impossible on this backend (graph was built fine)."


# Messages of backend limitations under which we keep the (lazy) shapes/dtypes and
# report a note instead of a failure.
CPU_LIMITS = ("[GatherMM::eval] Currently only supports float32",)


def forward(model, tokens, cache, evaluate=True, stepwise=False):
    "Run one chunk; evaluate logits and every cache array unless evaluate=False."
    if stepwise:  # feed one token at a time (models whose multi-token path is broken)
        for j in range(tokens.shape[1]):
            logits = forward(model, tokens[:, j : j + 1], cache, evaluate)
        return logits
    out = model(tokens, cache=cache)
    logits = out[0] if isinstance(out, tuple) else out
    if evaluate:
        arrs = [a for c in cache for _, a in all_arrays(c)]
        try:
            mx.eval(logits, *arrs)
        except RuntimeError as e:
            if any(m in str(e) for m in CPU_LIMITS):
                err = LazyOnly(str(e).splitlines()[0])
                err.logits = logits
                raise err from e
            raise
    return logits


def num_layers(model):
    try:
        return len(model.layers)
    except Exception:  # noqa: BLE001
        return None


def check_model(key, cfg, lines, problems, notes, verbose=True):
    stepwise = key in STEPWISE
    if stepwise:
        notes.append(f"prefill fed token by token: {STEPWISE[key]}")
    with import_stand_ins():
        Model, Args = _get_classes(cfg)
    mod = importlib.import_module(f"mlx_lm.models.{key}")
    if Model is not mod.Model or Args is not mod.ModelArgs:
        problems.append(f"_get_classes resolves model_type={cfg['model_type']!r} to "
                        f"{Args.__module__}, not {key}")
    vocab = cfg.get("vocab_size") or cfg.get("text_config", {}).get("vocab_size") or 64
    for dname, dtype in DTYPES:
        mx.random.seed(0)
        model = Model(Args.from_dict(cfg))
        cast_model(model, dtype)
        has_make_cache = hasattr(model, "make_cache")
        nl = num_layers(model)
        kernels = metal_only_kernels(model)
        if kernels:
            notes.append(f"{dname}: lazy only, Metal-only kernels stood in: {', '.join(kernels)}")
        for B in BATCHES:
            cache = make_prompt_cache(model)
            if dname == "float32" and B == 1:
                lines.append(f"  caches={len(cache)} layers={nl} make_cache={has_make_cache} "
                             f"pattern: {' '.join(short(c) for c in cache)}")
            fed, evaluate = 0, not kernels
            for n in CHUNKS:
                tokens = mx.random.randint(0, vocab, (B, n))
                if kernels:
                    with lazy_stand_ins(model):
                        logits = forward(model, tokens, cache, False, stepwise)
                elif evaluate:
                    try:
                        logits = forward(model, tokens, cache, True, stepwise)
                    except LazyOnly as e:
                        evaluate, logits = False, e.logits
                        notes.append(f"{dname} B={B}: lazy only (shapes/dtypes not evaluated): {e}")
                else:
                    logits = forward(model, tokens, cache, False, stepwise)
                fed += n
                if logits.shape[:2] != (B, 1 if stepwise else n):
                    problems.append(f"{dname} B={B}: logits shape {logits.shape}")
                if evaluate and mx.isnan(logits.astype(mx.float32)).any().item():
                    notes.append(f"{dname} B={B} n={n}: NaN in logits")
                if verbose or (dname == "float32" and B == 1):
                    lines.append(f"  [{dname} B={B} after {fed} tokens]")
                    for i, c in enumerate(cache):
                        lines += describe(c, label=f"{i}: ")
    # max_kv_size handling (only meaningful for models without make_cache)
    mx.random.seed(0)
    model = Model(Args.from_dict(cfg))
    if not hasattr(model, "make_cache"):
        cache = make_prompt_cache(model, max_kv_size=8)
        ok = all(type(c).__name__ == "RotatingKVCache" and c.max_size == 8 for c in cache)
        kernels = metal_only_kernels(model)
        for n in CHUNKS:
            try:
                with lazy_stand_ins(model) if kernels else contextlib.nullcontext():
                    forward(model, mx.random.randint(0, vocab, (1, n)), cache, not kernels, stepwise)
            except LazyOnly:
                pass
        lens = sorted({c.keys.shape[2] for c in cache if getattr(c, "keys", None) is not None})
        keeps = sorted({getattr(c, "keep", None) for c in cache}, key=str)
        lines.append(f"  max_kv_size=8: honoured={ok} kv_len_after_21={lens} keep={keeps}")
    else:
        lines.append("  max_kv_size=8: ignored (model defines make_cache)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default=str(DEFAULT_CONFIGS))
    ap.add_argument("--only", default="")
    ap.add_argument("--quiet", action="store_true", help="details only for float32 batch 1")
    args = ap.parse_args()
    configs = json.loads(Path(args.configs).read_text())
    only = [s for s in args.only.split(",") if s]
    failures = {}
    t_all = time.perf_counter()
    for key, cfg in configs.items():
        if only and key not in only:
            continue
        t0 = time.perf_counter()
        lines, problems, notes = [], [], []
        try:
            check_model(key, cfg, lines, problems, notes, verbose=not args.quiet)
        except Exception as e:  # noqa: BLE001
            problems.append(f"{type(e).__name__}: {e}")
            tb = traceback.format_exc().strip().splitlines()
            lines += ["    " + l for l in tb[-6:]]
        dt = time.perf_counter() - t0
        status = "FAIL" if problems else "ok"
        print(f"== {key} ({cfg.get('model_type')}) {status} {dt * 1000:.0f} ms")
        for l in lines:
            print(l)
        for n in notes:
            print(f"  note: {n}")
        for p in problems:
            print(f"  PROBLEM: {p}")
        if problems:
            failures[key] = problems
        sys.stdout.flush()
    total = time.perf_counter() - t_all
    n = len([k for k in configs if not only or k in only])
    print(f"\n{n - len(failures)}/{n} models ok, {len(failures)} failures, in {total:.1f} s")
    if failures:
        print("FAILURES:")
        for k, p in failures.items():
            print(f"  {k}: {'; '.join(p)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
