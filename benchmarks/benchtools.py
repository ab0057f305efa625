"""Measurement helpers shared by the benchmarks (and the tests and chapters that measure memory or compare gradients).

Not part of the library. Import from a script in this folder (`from benchtools import ...`) or put this folder on
`sys.path`.
"""
from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Any, Callable

import torch
from torch import Tensor, nn
from torch.autograd import DeviceType


def status_kib(field: str) -> int:
    "A memory field of /proc/self/status in KiB (VmRSS: resident now; VmHWM: peak since the last reset)."
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} field")


@contextlib.contextmanager
def _quiet_stderr():
    "Silence file descriptor 2 (the profiler's C++ library prints a line when it starts and stops)."
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved), os.close(devnull)


def measure_peak_memory(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[Any, int]:
    """Run `fn()`; return its result and the peak bytes of live tensors above the level at the start.

    On CUDA the allocator keeps the count. On CPU the profiler records every tensor allocation and free in order and
    the peak is read off their running sum: exact and the same on every run and machine, unlike the process's peak
    resident memory, which the kernel samples and the C allocator blurs (it moved by ±16 MiB between identical steps).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - start
    profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
    with _quiet_stderr():
        profiler.start()
    try:
        result = fn()
    finally:
        with _quiet_stderr():
            profiler.stop()
    changes = sorted((event.start_ns(), event.nbytes()) for event in profiler.profiler.kineto_results.events()
                     if event.name() == "[memory]" and event.device_type() == DeviceType.CPU)
    live = peak = 0
    for _, nbytes in changes:
        live += nbytes
        peak = max(peak, live)
    return result, peak


def reset_peak_rss() -> None:
    "Reset this process's VmHWM (peak resident memory) to its current resident memory."
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def gradient_vector(module: nn.Module) -> Tensor:
    "Every parameter gradient of `module` as one flat vector (parameters without a gradient are skipped)."
    return torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])


def relative_error(a: Tensor, b: Tensor) -> float:
    "‖a − b‖ / ‖b‖."
    return ((a - b).norm() / b.norm()).item()


def useful_flops(lengths: Tensor | list[int], config=None) -> float:
    "Forward FLOPs of the encoder on real tokens only: projections + SwiGLU per token, attention per sequence at its own length."
    from nomic_embed.model import forward_flops_per_token
    lengths = torch.as_tensor(lengths, dtype=torch.float64)
    per_token = forward_flops_per_token(lengths, config)  # linear: a number; attention: per sequence
    return float((lengths * (per_token["linear"] + per_token["attention"])).sum())


def matmul_gflops(size: int = 2048, repeats: int = 3, trials: int = 5) -> float:
    "The machine's fp32 matmul rate in GFLOP/s with torch's current thread count: best of `trials` timings of `repeats` matmuls."
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        a @ b
    best = 0.0
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(repeats):
            a @ b
        best = max(best, 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9)
    return best


# ---- interleaved A/B timing: engines take turns round by round, so a change in machine load hits all alike ----

def interleaved(engines: dict[str, Callable[[], Any]], rounds: int = 5, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each engine in each of `rounds` rounds, after `warmup` untimed rounds. Every round runs every engine
    once; the order rotates from round to round (A B C, B C A, ...), so no engine always follows the same one. An
    engine may report its own seconds (a subprocess timing its work inside): a returned object with a `seconds`
    attribute or key replaces the wall time of the call."""
    names = list(engines)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(warmup + rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            result = engines[name]()
            seconds = time.perf_counter() - start
            if isinstance(result, dict) and "seconds" in result:
                seconds = result["seconds"]
            elif hasattr(result, "seconds"):
                seconds = result.seconds
            if r >= warmup:
                times[name].append(seconds)
    return times


def ratio_stats(fast: list[float], slow: list[float]) -> dict[str, float]:
    "Per-round speed-up slow/fast of two engines timed by `interleaved`: median, min, max, quartiles and the number of rounds."
    import statistics
    ratios = sorted(s / f for f, s in zip(fast, slow))
    quartiles = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else [ratios[0]] * 3
    return {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1], "q1": quartiles[0], "q3": quartiles[2],
            "rounds": len(ratios)}


def format_ratio(stats: dict[str, float]) -> str:
    "`1.52x [1.41-1.60 over 5 rounds]`: the median per-round ratio and its range."
    return f"{stats['median']:.2f}x [{stats['min']:.2f}-{stats['max']:.2f} over {stats['rounds']} rounds]"


class EngineProcess:
    """A persistent child process that serves requests one at a time (one JSON line in, one JSON line out), so engines
    can be interleaved round by round while each keeps its own memory (peak RSS is then that engine's alone).
    `command` starts the child; it must answer each request line with one line of JSON on stdout."""

    def __init__(self, command: list[str], env: dict[str, str] | None = None):
        import subprocess
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, bufsize=1)
        self.ready = self.receive()  # the child's first line: loaded, with its resident memory

    def receive(self) -> dict:
        import json
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"engine process {self.process.args} exited with code {self.process.wait()}")
        return json.loads(line)

    def call(self, **request) -> dict:
        "Send one request; return the child's reply (a dict, with `seconds` when it timed work)."
        import json
        self.process.stdin.write(json.dumps(request) + "\n")
        return self.receive()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            self.process.wait(timeout=60)


def serve(handler: Callable[[dict], dict], ready: dict | None = None) -> None:
    "The child side of `EngineProcess`: print `ready` (default: resident memory), then answer each stdin line with `handler(request)`."
    import json
    out = sys.stdout
    sys.stdout = sys.stderr  # anything the engine prints goes to stderr; stdout carries the replies only
    print(json.dumps(ready or {"rss_mib": status_kib("VmRSS") / 1024}), file=out, flush=True)
    for line in sys.stdin:
        print(json.dumps(handler(json.loads(line))), file=out, flush=True)
