"""Benchmarks behind `loragen bench`: each module has add_arguments(parser) and run(args)."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

from ..fsutil import atomic_file

# benchmark name -> module under loragen_mobile.bench exposing add_arguments(parser) and run(args) -> dict
BENCHES = {
    "merge": "merge",
    "runtime": "runtime",
    "bundle": "bundle",
    "quant": "quant",
    "speedup": "speedup",
    "serve": "serve",
    "cli": "cli",
    "all": "all",
}


def machine_info() -> dict:
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def time_call(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict:
    """Run fn warmup + repeats times; return median, min, max and all seconds."""
    for _ in range(warmup):
        fn()
    secs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        secs.append(time.perf_counter() - t0)
    return {"median_s": statistics.median(secs), "min_s": min(secs), "max_s": max(secs), "runs_s": secs}


def run_child(args: list[str], what: str) -> dict:
    """``loragen ARGS`` in a child process: its wall seconds and peak RSS in bytes, read from the
    kernel for that child alone (wait4). A failure raises with the child's last stderr line."""
    import subprocess
    import sys

    from ..errors import LoragenError

    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "loragen_mobile", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    err = proc.stderr.read().decode(errors="replace").strip().splitlines()
    _, status, usage = os.wait4(proc.pid, 0)
    secs = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    if code != 0:
        raise LoragenError(f"{what} failed: {err[-1] if err else f'exit status {code}'}")
    return {"s": secs, "peak_rss_bytes": usage.ru_maxrss * 1024}


def write_json(result: dict, out: str | os.PathLike) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out, overwrite=True) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    return out
