"""Benchmark: time and peak process memory to build each preset's ModelCacheSpec (no weights touched).

Each preset runs in a fresh subprocess so its peak RSS is its own. Reported per preset:
  first_ms   - first from_pretrained call in the process (builds mlx-lm's module, the model, the probe)
  median_ms  - median of the following repeats
  peak_mb    - peak RSS of the whole process (Python + mlx + mlx-lm imported + the spec built)
  spec_mb    - peak RSS growth caused by building the spec (peak after minus RSS after imports)
  plan_ms    - median of kvspec.plan.plan(preset, "16GiB", 32768) after the spec timings (builds the spec again, sizes
               one sequence, searches the longest context): what `kvspec plan` costs beyond starting Python
Usage: python bench/bench_spec.py [--repeats 5] [--out bench/results/spec.json]
"""
import argparse, json, os, platform, subprocess, sys
from pathlib import Path

CHILD = r"""
import json, resource, statistics, sys, time
import mlx.core as mx, mlx_lm
from kvspec.build import from_pretrained
from kvspec.plan import plan
def rss_mb(): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
base = rss_mb()
name, repeats = sys.argv[1], int(sys.argv[2])
t = time.perf_counter(); spec = from_pretrained(name); first = time.perf_counter() - t
times = []
for _ in range(repeats):
    t = time.perf_counter(); from_pretrained(name); times.append(time.perf_counter() - t)
spec_peak = rss_mb()
plans = []
for _ in range(repeats):
    t = time.perf_counter(); plan(name, "16GiB", 32768); plans.append(time.perf_counter() - t)
print(json.dumps(dict(preset=name, model_type=spec.model_type, caches=len(spec.caches), pattern=spec.pattern,
    first_ms=round(first * 1e3, 1), median_ms=round(statistics.median(times) * 1e3, 1),
    peak_mb=round(spec_peak, 1), spec_mb=round(spec_peak - base, 1), plan_ms=round(statistics.median(plans) * 1e3, 1),
    mlx=mx.__version__, mlx_lm=mlx_lm.__version__)))
"""

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "spec.json"))
    args = ap.parse_args()
    from kvspec.config import preset_names
    rows, load_before = [], os.getloadavg()[0]
    for name in preset_names():
        out = subprocess.run([sys.executable, "-c", CHILD, name, str(args.repeats)], capture_output=True, text=True)
        if out.returncode: rows.append(dict(preset=name, error=out.stderr.strip().splitlines()[-1])); continue
        rows.append(json.loads(out.stdout)); print(rows[-1])
    result = dict(machine=f"{platform.machine()}, {platform.system()}, python {platform.python_version()}",
                  cpus=os.cpu_count(), load_avg=[round(load_before, 1), round(os.getloadavg()[0], 1)],  # 1-min load, start and end
                  repeats=args.repeats, targets=dict(ms=100, mb=150), rows=rows)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")

if __name__ == "__main__":
    main()
