"""Measurement helpers shared by the benchmarks (and the tests and chapters that measure memory or compare gradients).

Not part of the library: `measure_peak_memory` on CPU switches the C allocator to return large freed blocks to the
system at once, for the rest of the process (so resident memory follows live tensors), which slows later large
allocations. Import from a script in this folder (`from benchtools import ...`) or put this folder on `sys.path`.
"""
from __future__ import annotations

import ctypes
import sys
import time
from typing import Any, Callable

import torch
from torch import Tensor, nn


def status_kib(field: str) -> int:
    "A memory field of /proc/self/status in KiB (VmRSS: resident now; VmHWM: peak since the last reset)."
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} field")


def measure_peak_memory(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[Any, int]:
    "Run `fn()`; return its result and the peak memory in bytes above the level at the start (CUDA allocator, or process RSS on Linux CPU)."
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        return result, torch.cuda.max_memory_allocated(device) - start
    if not sys.platform.startswith("linux"):
        raise RuntimeError("CPU peak memory is read from /proc/self (Linux only); measure on Linux or on a CUDA device")
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD: blocks >= 64 KiB are mmap-ed, so freeing returns them to the OS
    libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset the high-water mark VmHWM to the current RSS
    start = status_kib("VmRSS")
    result = fn()
    return result, (status_kib("VmHWM") - start) * 1024


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
