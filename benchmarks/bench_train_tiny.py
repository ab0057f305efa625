"""Seconds per step of the tiny stage-1 run (`configs/mlm_tiny.yaml`) under different thread settings, variants
interleaved round by round (each run a fresh process), so a change in machine load hits all alike.

    python benchmarks/bench_train_tiny.py                                   # every variant, 3 rounds of 40 steps
    python benchmarks/bench_train_tiny.py --variants default omp1 --rounds 5 --steps 60
    python benchmarks/bench_train_tiny.py --variants default --steps 600 --rounds 1 --cadence   # the config as written
    python benchmarks/bench_train_tiny.py --alternate --steps 60    # step by step in one process: threads 2 / 1, prefetch off

Variants (environment of the training process, or a change made in it before training starts):
  default     as a user runs it: torch's default threads (one per core), the background batch prefetch on
  omp1        OMP_NUM_THREADS=1
  threads1    torch.set_num_threads(1) in the process
  passive     OMP_WAIT_POLICY=PASSIVE (idle OpenMP threads sleep instead of spinning)
  noprefetch  the next step's batch made in the training thread (`trainer.Prefetcher` replaced by a plain call)
  interop1    torch.set_num_interop_threads(1)

Each run trains `--steps` steps of the config (evaluation and checkpoints off unless `--cadence`, which keeps the
config's own: held-out evaluation and a checkpoint every 100 steps). Reported per variant: the median of the
trainer's own per-step `seconds` (steps 3 onward), the first step's, the whole run's wall time (process start to
exit: imports, corpus from its cache, steps, evaluation, checkpoints, final model) and the speed-up of each variant
over `default` as the median per-round ratio of median step times with its range. The corpus cache is built once
before the rounds (its first build is timed and reported separately).

`--alternate` interleaves finer: one training process whose consecutive optimiser steps take turns between torch's
default thread count, `torch.set_num_threads(1)`, and the default with the batch made in the training thread
(prefetch off) — so every round of three steps sees the same machine load. Reported: the median step time of each
and the per-round ratios to the default. Nothing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from benchtools import format_ratio, interleaved, ratio_stats  # noqa: E402

ROOT = HERE.parent
VARIANTS = {
    "default": {},
    "omp1": {"OMP_NUM_THREADS": "1"},
    "threads1": {"BENCH_TORCH_THREADS": "1"},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "noprefetch": {"BENCH_NO_PREFETCH": "1"},
    "interop1": {"BENCH_INTEROP_THREADS": "1"},
}


def child(config: str, run_dir: str, steps: int, cadence: bool, out: str) -> None:
    "One training run in this process, with the variant's in-process changes; writes its step times to `out`."
    import torch
    if os.environ.get("BENCH_TORCH_THREADS"):
        torch.set_num_threads(int(os.environ["BENCH_TORCH_THREADS"]))
    if os.environ.get("BENCH_INTEROP_THREADS"):
        torch.set_num_interop_threads(int(os.environ["BENCH_INTEROP_THREADS"]))
    from nomic_embed import trainer
    from nomic_embed.train import run_training
    if os.environ.get("BENCH_NO_PREFETCH"):
        trainer.Prefetcher = lambda make, total_steps: make  # batches made in the training thread, when asked for
    overrides = [f"output_dir={run_dir}", "logging.progress_bar=false", f"training.max_steps={steps}"]
    if not cadence:
        overrides += ["logging.eval_every_steps=0", f"checkpoint.every_steps={steps}", "logging.plot=false"]
    run_training(config, overrides)
    rows = [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line.strip()]
    seconds = [r["seconds"] for r in rows if "seconds" in r]
    Path(out).write_text(json.dumps({"steps": seconds, "threads": torch.get_num_threads()}))


def alternate(config: str, steps: int) -> None:
    "Train `steps` rounds of (default threads, 1 thread, prefetch off) steps in this process; print the step times and ratios."
    import torch
    from nomic_embed.train import load_config
    from nomic_embed.trainer import Prefetcher, Trainer
    work = Path(tempfile.mkdtemp(prefix="bench_train_tiny_"))
    cfg = load_config(config, [f"output_dir={work / 'run'}", "logging.progress_bar=false", f"training.max_steps={3 * steps + 2}"])
    trainer = Trainer(cfg)
    trainer.files.prepare(cfg, 0, trainer.stage)
    prefetch = Prefetcher(trainer.stage.micro_batches, trainer.total_steps)
    trainer.model.train()
    default_threads = torch.get_num_threads()
    variants = {"default": (default_threads, prefetch), "threads1": (1, prefetch), "noprefetch": (default_threads, trainer.stage.micro_batches)}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for step in range(3 * steps + 2):
        name = list(variants)[(step - 2) % 3] if step >= 2 else "default"  # two untimed warm-up steps
        threads, batches = variants[name]
        torch.set_num_threads(threads)
        trainer.next_batches = batches
        seconds = trainer.train_step(step)["seconds"]
        trainer.step += 1
        if step >= 2:
            times[name].append(seconds)
    torch.set_num_threads(default_threads)
    for name, values in times.items():
        line = f"{name:>10}: {statistics.median(values):.3f} s/step (median of {len(values)} steps; quartiles " \
               f"{statistics.quantiles(values, n=4)[0]:.3f}-{statistics.quantiles(values, n=4)[2]:.3f})"
        if name != "default":
            line += f"; {format_ratio(ratio_stats(values, times['default']))} faster than default ({default_threads} threads)"
        print(line, flush=True)


def run_variant(variant: str, args, work: Path, index: int) -> dict:
    run_dir, out = work / f"{variant}-{index}", work / f"{variant}-{index}.json"
    env = os.environ | VARIANTS[variant] | {"PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    subprocess.run([sys.executable, __file__, "--child", args.config, str(run_dir), str(args.steps), str(int(args.cadence)), str(out)],
                   check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    result = json.loads(out.read_text())
    steps = result["steps"]
    return {"seconds": statistics.median(steps[2:] or steps), "first": steps[0], "wall": wall, "threads": result["threads"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--config", default="configs/mlm_tiny.yaml")
    parser.add_argument("--cadence", action="store_true", help="keep the config's evaluation and checkpoint cadence")
    parser.add_argument("--alternate", action="store_true", help="alternate settings step by step in one process")
    parser.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.alternate:
        print(f"{args.config}: steps alternating default / threads1 / noprefetch, {args.steps} each; load average {os.getloadavg()[0]:.1f}", flush=True)
        alternate(args.config, args.steps)
        return print(f"load average at end {os.getloadavg()[0]:.1f}")
    if args.child:
        config, run_dir, steps, cadence, out = args.child
        return child(config, run_dir, int(steps), bool(int(cadence)), out)

    work = Path(tempfile.mkdtemp(prefix="bench_train_tiny_"))
    cache = os.environ.get("NOMIC_EMBED_CACHE")
    print(f"{args.config}: {args.steps} steps per run, {args.rounds} rounds, variants {', '.join(args.variants)}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    # the corpus cache: built by the first run on a machine; make sure it exists before the timed rounds
    start = time.perf_counter()
    from nomic_embed.train import load_config, MLMStage  # noqa: F401
    subprocess.run([sys.executable, "-c", "import sys; from nomic_embed.train import run_training; "
                    f"run_training({args.config!r}, ['output_dir={work / 'warm'}', 'logging.progress_bar=false', 'training.max_steps=1', "
                    "'logging.eval_every_steps=0', 'logging.plot=false'])"],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL, env=os.environ | {"PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    print(f"one-step run with the corpus cache (built now if it was missing{f', NOMIC_EMBED_CACHE={cache}' if cache else ''}): "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    results: dict[str, list[dict]] = {v: [] for v in args.variants}
    counter = iter(range(10**6))
    times = interleaved({v: (lambda v=v: results[v].append(run_variant(v, args, work, next(counter))) or results[v][-1])
                         for v in args.variants}, rounds=args.rounds, warmup=0)
    for variant in args.variants:
        rows = results[variant]
        line = (f"{variant:>10}: {statistics.median(times[variant]):.3f} s/step (median of per-run medians; runs "
                f"{', '.join(format(r['seconds'], '.3f') for r in rows)}), first step {statistics.median(r['first'] for r in rows):.2f} s, "
                f"run wall {statistics.median(r['wall'] for r in rows):.0f} s, torch threads {rows[0]['threads']}")
        if variant != "default" and "default" in times:
            line += f"; {format_ratio(ratio_stats(times[variant], times['default']))} faster than default"
        print(line, flush=True)
    print(f"load average at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
