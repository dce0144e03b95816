"""Fuzz: a seeded catalogue of bad inputs (tests/fuzz_inputs.py: config values for every numeric key,
overrides, specs, shard sets, manifests, ingest sources, checkpoints, sweep ids), each run through
`tipslab`'s main() in a forked child of one runner process, so that the imports are paid once.
Each must end with exit code 2 and one line naming the file, key or row, with no traceback, within
a time and memory bound, and must write nothing outside the output folder.

Run alone (`python tests/test_fuzz.py`), it prints the counts and every case that failed; with
`--json` the counts as JSON. Commands that would start work (a sweep, training, an evaluation, Ray)
are stubbed in the child: reaching one means the bad input was accepted.
"""

import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import types
from collections import Counter
from pathlib import Path

# A case that has used this much CPU is a hang (killed by SIGXCPU: on a loaded machine wall time
# says little); one still running after WALL_S (waiting on something) is a hang too.
CPU_S, WALL_S = 10, 120
MEMORY_B = 3 << 30  # more address space than the runner has at the start is a blow-up
SKIPPED = "skipped "  # ingest names each bad row it skips on a line of its own, before the error


class Accepted(Exception):
    """The command got past every check to the point where work would start."""


def stub_work() -> None:
    def accepted(*args, **kwargs):
        raise Accepted

    sys.modules["tipslab.orchestrator.sweep"] = types.SimpleNamespace(run_sweep=accepted)
    import tipslab.orchestrator.eval_commands as eval_commands
    import tipslab.orchestrator.runtime as runtime

    eval_commands.run_evaluation = accepted
    eval_commands.ensure_ray = runtime.ensure_ray = accepted


def child(argv: list[str], cwd: Path, home: Path, err_path: Path) -> None:
    """In the forked child: run main(argv), its stderr to err_path; never returns."""
    code = 3
    try:
        os.chdir(cwd)
        os.environ["TIPSLAB_HOME"] = str(home)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        used = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        if limit == resource.RLIM_INFINITY:
            resource.setrlimit(resource.RLIMIT_AS, (used + MEMORY_B, resource.RLIM_INFINITY))
        spent = resource.getrusage(resource.RUSAGE_SELF)
        resource.setrlimit(resource.RLIMIT_CPU, (int(spent.ru_utime + spent.ru_stime) + CPU_S, resource.RLIM_INFINITY))
        err = os.open(err_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(err, 2)
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        sys.stdout = open(os.devnull, "w")
        from tipslab.orchestrator.cli import main

        code = main(argv)
    except Accepted:
        print("FUZZ: accepted (work would start)", file=sys.stderr)
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 4
    finally:
        sys.stderr.flush()
        os._exit(code)


def tree(folder: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


def classify(case, code: int | None, stderr: str) -> str:
    if code is None:
        return "hang"
    if "Traceback" in stderr or code not in (0, 1, 2):
        return "traceback"
    if code == 0:
        return "accepted"
    lines = [line for line in stderr.splitlines() if line.strip() and not line.startswith(SKIPPED)]
    named = (
        lines
        and any(n in lines[-1] for n in case.names)
        or any(n in line for line in stderr.splitlines() if line.startswith(SKIPPED) for n in case.names)
    )
    if code == 2 and len(lines) == 1 and lines[0].startswith("tipslab: error: ") and named:
        return "clear"
    return "unclear"


def run_cases(cases: list, cwd: Path, home: Path, logs: Path, width: int) -> list[tuple[str, str, float]]:
    """Each case in a forked child, `width` at a time: (outcome, stderr, CPU seconds of the child)."""
    results: list = [None] * len(cases)
    pending, running = list(range(len(cases))), {}  # pid -> (case index, start time)
    while pending or running:
        while pending and len(running) < width:
            i = pending.pop(0)
            pid = os.fork()
            if pid == 0:
                child(cases[i].argv, cwd, home, logs / f"stderr-{i}.txt")
            running[pid] = (i, time.perf_counter())
        for pid, (i, start) in list(running.items()):
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                code, cpu = os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime
                code = None if code == -signal.SIGXCPU else 4 if code < 0 else code  # < 0: killed by a signal
            elif time.perf_counter() - start > WALL_S:
                os.kill(pid, signal.SIGKILL)
                _, _, usage = os.wait4(pid, 0)
                code, cpu = None, usage.ru_utime + usage.ru_stime
            else:
                continue
            del running[pid]
            err = logs / f"stderr-{i}.txt"
            stderr = err.read_text(errors="replace") if err.exists() else ""
            results[i] = (classify(cases[i], code, stderr), stderr, cpu)
        time.sleep(0.002)
    return results


def run_all(root: Path, checkpoints: bool = True) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fuzz_inputs import checkpoint_families, torch_free_cases

    import tipslab.orchestrator.cli  # noqa: F401  the imports every case shares, before the forks
    import tipslab.orchestrator.spec  # noqa: F401

    inp, out = root / "in", root / "out"
    stub_work()
    width = max(2, min(4, os.cpu_count() or 1))
    cases, outcomes, strays = [], [], set()

    def run(made: list) -> None:  # the inputs are made, then every file but the output folder is watched
        before = tree(root)
        outcomes.extend(run_cases(made, inp, out / "home", root, width))
        cases.extend(made)
        after = {k: v for k, v in tree(root).items() if not k.startswith(str(out)) and "/stderr-" not in k}
        strays.update(k for k, _ in set(after.items()) - set(before.items()))

    # The cases that need no torch first, forked from a runner without it (a fork of a process that
    # holds torch and the model stack costs several times as much); then those of the checkpoints.
    run(torch_free_cases(inp, str(out)))
    if checkpoints:
        import tipslab.jobs.eval.probes.features  # noqa: F401
        import tipslab.models.checkpoint  # noqa: F401
        import tipslab.models.official  # noqa: F401  (the model stack: 1.8 CPU-s in each import case's child)

        run(checkpoint_families(inp, str(out)))
    results = []
    for case, (outcome, stderr, cpu) in zip(cases, outcomes):
        results.append({"family": case.family, "argv": case.argv, "outcome": outcome, "cpu_s": round(cpu, 3)})
        results[-1]["stderr"] = stderr.strip()[-600:]
    counts = Counter(r["outcome"] for r in results)
    by_family = {}
    for r in results:
        by_family.setdefault(r["family"], Counter())[r["outcome"]] += 1
    return {
        "inputs": len(results),
        "counts": dict(counts),
        "by_family": {k: dict(v) for k, v in by_family.items()},
        "strays": sorted(strays),
        "cpu_s": round(sum(r["cpu_s"] for r in results), 1),
        "cpu_s_by_family": {f: round(sum(r["cpu_s"] for r in results if r["family"] == f), 1) for f in by_family},
        "results": results,
    }


def summary(report: dict) -> str:
    c = report["counts"]
    return (
        f"fuzz: {report['inputs']} inputs tried in {report['cpu_s']:.1f} CPU-s: {c.get('clear', 0)} clear errors "
        f"(exit 2, one line naming the file, key or row), {c.get('traceback', 0)} tracebacks, "
        f"{c.get('hang', 0)} hangs, {c.get('accepted', 0)} accepted silently, {c.get('unclear', 0)} unclear; "
        "files written outside the output folder: "
        f"{len(report['strays'])}"
    )


def test_every_bad_input_gets_exit_2_and_one_line_naming_it(tmp_path):
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, __file__, "--json", str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    print(f"\n{summary(report)}; {time.perf_counter() - start:.1f} s with the runner's imports")
    failed = [f"{r['outcome']}: tipslab {' '.join(r['argv'])[:160]}\n  {r['stderr'][-300:]}" for r in report["results"]]
    failed = [f for f, r in zip(failed, report["results"]) if r["outcome"] != "clear"]
    assert report["inputs"] >= 100
    assert not failed, f"{len(failed)} of {report['inputs']} bad inputs were not refused clearly:\n" + "\n".join(failed)
    assert report["strays"] == []


def main(args: list[str]) -> int:
    as_json = "--json" in args
    folders = [a for a in args if not a.startswith("--")]
    root = Path(folders[0]) if folders else Path(tempfile.mkdtemp(prefix="tipslab-fuzz-"))
    report = run_all(root, checkpoints="--no-checkpoints" not in args)
    if as_json:
        print(json.dumps(report))
        return 0
    for r in report["results"]:
        if r["outcome"] != "clear":
            print(f"[{r['outcome']}] tipslab {' '.join(r['argv'])[:200]}\n    {r['stderr'][-400:]}\n")
    print(json.dumps(report["by_family"]))
    print(json.dumps(report["cpu_s_by_family"]))
    print(summary(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
