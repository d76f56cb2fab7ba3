"""Benchmark kvspec.fit: weights() and fit() time and peak process memory per preset, beside the common shortcuts.

Run: PYTHONPATH=. python bench/bench_fit.py   (writes bench/results/fit.json)
Each preset runs in a fresh process so its peak RSS is its own (imports included, reported separately)."""
import json, platform, subprocess, sys
from pathlib import Path

CHILD = r'''
import json, resource, sys, time
t0 = time.perf_counter()
import mlx.core as mx
from kvspec.fit import fit
from kvspec.weights import weights
from kvspec.config import load_config, text_config
from kvspec.plan import seed_formula_nbytes
import_s = time.perf_counter() - t0
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
name, context, memory = sys.argv[1], 32768, "16GiB"
out = {"preset": name, "import_ms": round(import_s * 1000, 1)}
try:
    t = time.perf_counter(); w = weights(name); out["weights_ms"] = round((time.perf_counter() - t) * 1000, 1)
    t = time.perf_counter(); f = fit(name, memory=memory, context=context); out["fit_ms"] = round((time.perf_counter() - t) * 1000, 1)
except Exception as e:
    out["error"] = f"{type(e).__name__}: {e}"[:300]
else:
    cfg, _ = load_config(name)
    q = w.quantization
    bits = q["bits"] if q else 16
    out.update(weights_nbytes=w.nbytes, num_params=w.num_params, bits=bits,
               params_x_bits_over_8=w.num_params * bits // 8, params_x_2=w.num_params * 2,
               kv_peak_nbytes=f.kv_peak_nbytes, kv_formula_nbytes=seed_formula_nbytes(cfg, context),
               reserve_nbytes=f.reserve_nbytes, fits=f.fits, max_context_tokens=f.max_context_tokens, max_batch=f.max_batch)
scale = 1 if sys.platform == "darwin" else 1024   # ru_maxrss: bytes on macOS, KiB on Linux
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out.update(peak_rss_mb=round(rss * scale / 2**20, 1), import_rss_mb=round(rss0 * scale / 2**20, 1))
print(json.dumps(out))
'''

def main():
    root = Path(__file__).resolve().parent.parent
    presets = sorted(p.stem for p in (root / "kvspec" / "presets").glob("*.json"))
    rows = []
    for name in presets:
        r = subprocess.run([sys.executable, "-c", CHILD, name], capture_output=True, text=True, timeout=300, cwd=root)
        rows.append(json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else {"preset": name, "error": r.stderr[-300:]})
        print(rows[-1])
    import mlx.core as mx, mlx_lm
    res = {"context": 32768, "memory": "16GiB", "machine": f"{platform.system()} {platform.machine()}",
           "mlx": mx.__version__, "mlx_lm": mlx_lm.__version__, "rows": rows}
    (root / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (root / "bench" / "results" / "fit.json").write_text(json.dumps(res, indent=1) + "\n")

if __name__ == "__main__": main()
