"""Side-by-side benchmarks: dalle_core against dalle-pytorch 1.6.6, one table.

    python benchmarks/run.py --peer-python /path/to/peer-venv/bin/python      # full run, ~7 min on a quiet 2-core machine
    python benchmarks/run.py --quick                                           # smoke test, ~2 min
    python benchmarks/run.py --only train_full gen_cond3 --rounds 5

Every measurement is a fresh process (`benchmarks/workloads.py`), so peak RSS is per process. Within a
round each workload runs ours then the reference (the order flips every round), so slow drifts of a shared
machine hit both sides alike. Times are pooled over rounds; the table shows medians. dalle_core runs on
this interpreter (sys.executable); the reference on --peer-python (default $DALLE_CORE_PEER_PYTHON, else
.peer-venv/bin/python, built with ../shared/peer/setup_peer.sh when missing).

Writes benchmarks/results.md (table + machine description) and benchmarks/results.json (every raw time).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
import workloads as W  # noqa: E402

IMPLS = ("ours", "ref")

# What each workload measures, for the table.
DESCRIPTIONS = {
    "train_full": "train step, benchmark config, full attention (batch 8)",
    "train_sparse": "train step, benchmark config, axial_row/axial_col/axial_row/conv_like (batch 8)",
    "train_paper": "train step, paper-shaped (dim 512, 256 text + 32x32 image tokens, batch 4)",
    "train_paper_saver": "paper-shaped train step with each memory saver: ours gradient_checkpointing=True, "
                         "reference reversible=True",
    "gen_use_cache": "generate 4 images, generate_images(use_cache=True)",
    "gen_cache_hand": "generate 4 images; ref: forward + cache dict by hand (its fastest path)",
    "gen_cond3": "generate 4 images, use_cache=True, cond_scale=3",
    "gen_compile": "generate 4 images; ours: use_cache=True, compile=True (compiled in the warm-up); ref: as gen_cache_hand",
}
# Default timed repeats (per process) and warm-up calls, per workload; (impl, workload) overrides.
DEFAULT_REPEATS = {"train_full": 5, "train_sparse": 5, "train_paper": 2, "train_paper_saver": 2,
                   "gen_use_cache": 3, "gen_cache_hand": 3, "gen_cond3": 3, "gen_compile": 3}
SLOW = {("ref", "gen_use_cache")}  # dalle-pytorch drops the cache when cond_scale == 1: ~20 s a call


def machine_description(threads: Optional[int]) -> Dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        model = platform.processor() or "unknown"
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "unknown", False
    return {
        "cpu": model,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": usable,
        "torch_threads": threads or torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git": commit + ("+dirty" if dirty else ""),
        "loadavg_start": os.getloadavg(),
    }


def peer_python(arg: Optional[str]) -> str:
    """The reference's interpreter: --peer-python, $DALLE_CORE_PEER_PYTHON, or .peer-venv (built if missing)."""
    path = arg or os.environ.get("DALLE_CORE_PEER_PYTHON")
    if path:
        if not Path(path).exists():
            sys.exit(f"reference python {path!r} does not exist")
        return path
    venv = REPO / ".peer-venv"
    py = venv / "bin" / "python"
    if not py.exists():
        script = REPO.parent / "shared" / "peer" / "setup_peer.sh"
        if not script.exists():
            sys.exit(f"no reference python: pass --peer-python or set DALLE_CORE_PEER_PYTHON ({script} is missing)")
        print(f"building the reference venv: bash {script} {venv}", flush=True)
        subprocess.run(["bash", str(script), str(venv)], cwd=REPO, check=True)
    return str(py)


def cpu_busy_s() -> Optional[float]:
    """Busy CPU seconds of the whole machine so far (all cores; steal time included), from /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_one(python: str, args: List[str], timeout: float) -> Dict:
    cmd = [python, str(HERE / "workloads.py"), *args]
    busy0, own0 = cpu_busy_s(), children_cpu_s()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "cmd": shlex.join(cmd)}
    wall = time.perf_counter() - t0
    busy1, own1 = cpu_busy_s(), children_cpu_s()
    # CPU the rest of the machine used while this process ran, in cores (0 on a quiet machine)
    others = None if busy0 is None or busy1 is None else max(0.0, (busy1 - busy0) - (own1 - own0)) / wall
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"error": f"exit {proc.returncode}: " + " | ".join(tail), "cmd": shlex.join(cmd)}
    out = json.loads(lines[-1])
    out["process_wall_s"] = wall
    out["other_cpu_cores"] = others
    return out


def median(xs: List[float]) -> Optional[float]:
    return statistics.median(xs) if xs else None


def fmt(x: Optional[float], spec: str = ".3f", suffix: str = "") -> str:
    return "—" if x is None else f"{x:{spec}}{suffix}"


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a is not None and b else None


def summarize(results: Dict, flops: Dict, peak_gflops: Optional[float]) -> Dict:
    summary = {}
    for name, per_impl in results.items():
        row = {}
        for impl, runs in per_impl.items():
            ok = [r for r in runs if "error" not in r]
            times = [t for r in ok for t in r["times"]]
            med = median(times)
            row[impl] = {
                "median_s": med,
                "min_s": min(times) if times else None,
                "max_s": max(times) if times else None,
                "samples": len(times),
                "processes": len(ok),
                "errors": [r["error"] for r in runs if "error" in r],
                "peak_rss_mb": max((r["peak_rss_mb"] for r in ok), default=None),
                "gflops_per_s": flops[name]["total"] / med / 1e9 if med else None,
            }
            row[impl]["frac_of_peak"] = ratio(row[impl]["gflops_per_s"], peak_gflops)
        summary[name] = row
    return summary


def headline(summary: Dict) -> List[str]:
    """The comparisons the project reports, as sentences."""
    def get(name, impl, key="median_s"):
        return summary.get(name, {}).get(impl, {}).get(key)

    lines = []

    def speed(label, ours, ref):
        r = ratio(ref, ours)
        if r is not None:
            verdict = f"ours **{r:.2f}x** faster" if r >= 1 else f"ours **{1 / r:.2f}x** slower"
            lines.append(f"- {label}: ours {ours:.3f} s, reference {ref:.3f} s: {verdict}")

    speed("Train step, benchmark config, full attention", get("train_full", "ours"), get("train_full", "ref"))
    speed("Train step, benchmark config, axial/conv mix", get("train_sparse", "ours"), get("train_sparse", "ref"))
    speed("Train step, paper-shaped", get("train_paper", "ours"), get("train_paper", "ref"))
    mo, mr = get("train_paper", "ours", "peak_rss_mb"), get("train_paper", "ref", "peak_rss_mb")
    if mo and mr:
        lines.append(f"- Paper-shaped train step peak RSS: ours {mo:.0f} MB, reference {mr:.0f} MB: "
                     f"ratio reference/ours **{mr / mo:.2f}x**")
    speed("Train step, paper-shaped, memory savers (ours checkpointing, reference reversible)",
          get("train_paper_saver", "ours"), get("train_paper_saver", "ref"))
    ms = get("train_paper_saver", "ours", "peak_rss_mb")
    if ms and mr:
        lines.append(f"- Paper-shaped peak RSS, ours with gradient_checkpointing=True vs the reference's default: "
                     f"ours {ms:.0f} MB = **{100 * ms / mr:.0f}%** of {mr:.0f} MB")
    if mo and mr:
        lines.append(f"- Paper-shaped peak RSS, defaults: ours = **{100 * mo / mr:.0f}%** of the reference's")
    speed("Generate 4 images vs reference `generate_images(use_cache=True)`", get("gen_use_cache", "ours"),
          get("gen_use_cache", "ref"))
    speed("Generate 4 images vs reference forward + cache by hand", get("gen_cache_hand", "ours"),
          get("gen_cache_hand", "ref"))
    c3, c1 = get("gen_cond3", "ours"), median(summary.get("_ours_cond1_times", []))
    if c3 and c1:
        lines.append(f"- Guidance cost, ours: cond_scale=3 {c3:.3f} s vs cond_scale=1 {c1:.3f} s: "
                     f"**{c3 / c1:.2f}x** the time (both branches run as one batch of 8; the cond_scale=1 "
                     f"median pools our `gen_use_cache` and `gen_cache_hand` runs, the same call)")
    speed("Generate 4 images with cond_scale=3", get("gen_cond3", "ours"), get("gen_cond3", "ref"))
    speed("Generate 4 images, ours with compile=True (after compiling) vs reference forward + cache by hand",
          get("gen_compile", "ours"), get("gen_compile", "ref"))
    warm = summary.get("_ours_compile_warmup", [])
    if warm:
        lines.append(f"- Compiling (the first compile=True call, per process): median {median(warm):.1f} s")
    return lines


def markdown(meta: Dict, summary: Dict, flops: Dict, plan: Dict) -> str:
    m = meta["machine"]
    out = [
        "# Benchmarks: dalle_core vs dalle-pytorch 1.6.6",
        "",
        f"- Machine: {m['cpu']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable), {m['platform']}",
        f"- torch {m['torch']} (ours) / {meta.get('ref_torch') or '?'} (reference), {m['torch_threads']} threads, "
        f"Python {m['python']}",
        f"- Measured fp32 matmul peak: {fmt(meta['matmul_peak_gflops'], '.1f')} GFLOP/s "
        f"(best 2048x2048 matmul over {len(meta['matmul_peak_runs'])} process(es): "
        f"{', '.join(f'{g:.0f}' for g in meta['matmul_peak_runs'])})",
        f"- Load average at start / end: {', '.join(f'{x:.2f}' for x in m['loadavg_start'])} / "
        f"{', '.join(f'{x:.2f}' for x in meta['loadavg_end'])}",
        f"- CPU used by other work while each benchmark process ran: median {fmt(median(meta['others']), '.2f')}, "
        f"max {fmt(max(meta['others'], default=None), '.2f')} cores of {m['usable_cpus']} "
        f"(about 0 on a quiet machine; more means the times are noisy)",
        f"- dalle_core {m['git']}; date {meta['date']}; {meta['mode']} run, {meta['rounds']} round(s), "
        f"took {meta['elapsed_s'] / 60:.1f} min",
        f"- Command: `{meta['command']}`",
        "",
        "Times are medians over every timed repeat of every round (n = samples ours/ref); each process is "
        "one implementation and one workload, so peak RSS is per process (max over processes). "
        "Speed-up = reference / ours. \"% peak\" = analytic useful model FLOPs per step / median time, as a "
        "fraction of the measured matmul peak (same FLOP count for both: see benchmarks/README.md).",
        "",
        "| Workload | GFLOP/step | Ours (s) | Ref (s) | Speed-up | n | Ours RSS (MB) | Ref RSS (MB) | "
        "RSS ref/ours | Ours % peak | Ref % peak |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, row in summary.items():
        o, r = row.get("ours", {}), row.get("ref", {})
        cells = [
            f"`{name}`: {DESCRIPTIONS[name]}",
            fmt(flops[name]["total"] / 1e9, ".1f"),
            fmt(o.get("median_s")) if not o.get("errors") or o.get("samples") else "error",
            fmt(r.get("median_s")) if not r.get("errors") or r.get("samples") else "error",
            fmt(ratio(r.get("median_s"), o.get("median_s")), ".2f", "x"),
            f"{o.get('samples', 0)}/{r.get('samples', 0)}",
            fmt(o.get("peak_rss_mb"), ".0f"),
            fmt(r.get("peak_rss_mb"), ".0f"),
            fmt(ratio(r.get("peak_rss_mb"), o.get("peak_rss_mb")), ".2f", "x"),
            fmt(None if o.get("frac_of_peak") is None else 100 * o["frac_of_peak"], ".1f", "%"),
            fmt(None if r.get("frac_of_peak") is None else 100 * r["frac_of_peak"], ".1f", "%"),
        ]
        out.append("| " + " | ".join(cells) + " |")
    cond1 = [t for name in ("gen_use_cache", "gen_cache_hand") for r in meta["runs"].get(name, {}).get("ours", [])
             if "error" not in r for t in r["times"]]
    compile_warmup = [r["warmup_times"][0] for r in meta["runs"].get("gen_compile", {}).get("ours", [])
                      if "error" not in r and r.get("warmup_times")]
    lines = headline(dict(summary, _ours_cond1_times=cond1, _ours_compile_warmup=compile_warmup))
    if lines:
        out += ["", "## Comparisons", ""] + lines
    errors = [f"- `{name}` {impl}: {e}" for name, row in summary.items() for impl, s in row.items()
              for e in s["errors"]]
    if errors:
        out += ["", "## Errors", ""] + errors
    out += ["", "## Repeats per process (timed + warm-up)", ""]
    out += [f"- `{name}`: " + ", ".join(f"{impl} {p['repeats']}+{p['warmup']}" for impl, p in per.items())
            for name, per in plan.items()]
    out += ["", "Notes: dalle-pytorch's `generate_images` ignores `use_cache` when cond_scale == 1 (its "
            "`forward_with_cond_scale` drops the cache), hence `gen_cache_hand`, which calls its forward with a "
            "cache dict by hand. With cond_scale != 1 it does use the cache.", ""]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer-python", help="python of a dalle-pytorch 1.6.6 venv (default $DALLE_CORE_PEER_PYTHON, "
                                              "else .peer-venv/bin/python, built if missing)")
    parser.add_argument("--only", nargs="+", choices=sorted(W.WORKLOADS), metavar="WORKLOAD",
                        help=f"workloads to run (default all: {' '.join(W.WORKLOADS)})")
    parser.add_argument("--rounds", type=int, default=3, help="processes per implementation and workload (default 3)")
    parser.add_argument("--repeats", type=int, help="timed repeats per process for every workload (default: "
                        + ", ".join(f"{k} {v}" for k, v in DEFAULT_REPEATS.items()) + ")")
    parser.add_argument("--slow-repeats", type=int, default=1,
                        help="timed repeats per process of the reference's generate_images(use_cache=True), "
                             "~20 s each, no warm-up (default 1)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls per process (default 1)")
    parser.add_argument("--threads", type=int, help="torch threads in every process (default: torch's default)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 1 round, 1 repeat, 1 warm-up")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per process before it is abandoned")
    parser.add_argument("--output-dir", type=Path, default=HERE, help="where results.md / results.json go")
    args = parser.parse_args()

    t_start = time.perf_counter()
    names = args.only or list(W.WORKLOADS)
    rounds = 1 if args.quick else args.rounds
    plan = {}
    for name in names:
        plan[name] = {}
        for impl in IMPLS:
            reps = 1 if args.quick else (args.repeats or DEFAULT_REPEATS[name])
            warm = args.warmup
            if (impl, name) in SLOW:
                reps, warm = min(reps, args.slow_repeats), 0
            plan[name][impl] = {"repeats": reps, "warmup": warm}
    pythons = {"ours": sys.executable, "ref": peer_python(args.peer_python)}
    thread_args = ["--threads", str(args.threads)] if args.threads else []

    machine = machine_description(args.threads)
    print(f"{machine['cpu']}, {machine['usable_cpus']} CPUs, torch {machine['torch']}, "
          f"{machine['torch_threads']} threads; reference: {pythons['ref']}", flush=True)
    flops = {name: W.model_flops(name) for name in names}

    results: Dict[str, Dict[str, List[Dict]]] = {name: {impl: [] for impl in IMPLS} for name in names}
    peaks: List[float] = []
    ref_torch = None
    for rnd in range(rounds):
        peak = run_one(sys.executable, ["--workload", "matmul_peak", *thread_args], args.timeout)
        if "gflops" in peak:
            peaks.append(peak["gflops"])
            print(f"[round {rnd + 1}/{rounds}] matmul peak {peak['gflops']:.1f} GFLOP/s", flush=True)
        order = IMPLS if rnd % 2 == 0 else IMPLS[::-1]
        for name in names:
            for impl in order:
                p = plan[name][impl]
                res = run_one(pythons[impl], ["--impl", impl, "--workload", name, "--repeats", str(p["repeats"]),
                                              "--warmup", str(p["warmup"]), *thread_args], args.timeout)
                results[name][impl].append(res)
                if "error" in res:
                    print(f"[round {rnd + 1}/{rounds}] {name:15s} {impl:4s} ERROR {res['error']}", flush=True)
                else:
                    ref_torch = res.get("torch") if impl == "ref" else ref_torch
                    times = " ".join(f"{t:.3f}" for t in res["times"])
                    print(f"[round {rnd + 1}/{rounds}] {name:15s} {impl:4s} {times} s, "
                          f"peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)

    peak_gflops = max(peaks) if peaks else None
    summary = summarize(results, flops, peak_gflops)
    meta = {
        "machine": machine,
        "ref_torch": ref_torch,
        "ref_python": pythons["ref"],
        "matmul_peak_gflops": peak_gflops,
        "matmul_peak_runs": peaks,
        "loadavg_end": os.getloadavg(),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "rounds": rounds,
        "elapsed_s": time.perf_counter() - t_start,
        "command": shlex.join(["python", os.path.relpath(__file__, REPO), *sys.argv[1:]]),
    }
    meta["others"] = [r["other_cpu_cores"] for per in results.values() for runs in per.values() for r in runs
                      if r.get("other_cpu_cores") is not None]
    md = markdown(dict(meta, runs=results), summary, flops, plan)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "results.md").write_text(md)
    (args.output_dir / "results.json").write_text(json.dumps(
        {"meta": meta, "plan": plan, "flops": flops, "summary": summary, "runs": results}, indent=1) + "\n")
    print()
    print(md)
    print(f"wrote {args.output_dir / 'results.md'} and {args.output_dir / 'results.json'}")


if __name__ == "__main__":
    main()
