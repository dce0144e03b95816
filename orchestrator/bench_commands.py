"""`tipslab bench`: benchmarks that print figures."""
import json
import os
import subprocess
import sys

from .config import load_experiment, to_dict

TINY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "ablations", "base", "tips_tiny.yaml")


def cmd_bench_step(args) -> None:
    """Each size in a fresh process, so that each peak memory figure is its own."""
    results = []
    for size in args.sizes:
        config = to_dict(load_experiment(args.config, [f"model.size={size}", *args.overrides]))
        proc = subprocess.run([sys.executable, "-m", "tipslab.jobs.bench", json.dumps(config), str(args.batch_size),
                               str(args.repeats)],
                              capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"tipslab: bench step failed for size {size}:\n{proc.stderr[-2000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"{'size':>8} {'batch':>5} {'step s':>8} {'img/s':>8} {'peak RSS MB':>12} {'params M':>9}  device")
    for r in results:
        print(f"{r['size']:>8} {r['batch_size']:>5} {r['step_s']:>8.3f} {r['images_per_s']:>8.1f} "
              f"{r['peak_rss_mb']:>12.0f} {r['student_params_m']:>9.1f}  {r['device']} ({r['threads']} threads)")


def add_parsers(sub) -> None:
    bench = sub.add_parser("bench", help="benchmarks that print figures")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH_COMMAND")
    step = bench_sub.add_parser("step", help="one TIPS training step (forward + backward + update) per size")
    step.add_argument("overrides", nargs="*", metavar="key=value")
    step.add_argument("--config", default=TINY, help="experiment YAML (default: the tiny base)")
    step.add_argument("--sizes", nargs="+", default=["tiny"], help="model sizes, e.g. tiny B")
    step.add_argument("--batch-size", type=int, default=8)
    step.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up step (median)")
    step.add_argument("--json", action="store_true")
    step.set_defaults(func=cmd_bench_step)
