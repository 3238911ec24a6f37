"""Benchmarks behind `loragen bench`: each module has add_arguments(parser) and run(args)."""

from __future__ import annotations

import contextlib
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
    "peers": "peers",
    "cli": "cli",
    "all": "all",
}


@contextlib.contextmanager
def work_dir(path: str | None):
    """A benchmark's work directory: PATH (created, kept: later runs reuse its model and exports), or
    without one a temporary directory, removed with everything in it when the benchmark ends (at
    the full-size presets its exports are gigabytes each)."""
    import tempfile

    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="loragen-bench-") as d:
        yield Path(d)


def in_work_dir(option: str):
    """A benchmark's ``run(args, work)`` as ``run(args)``: WORK is the work directory that
    ``args.OPTION`` names, or a temporary one (:func:`work_dir`)."""
    import functools

    def wrap(bench: Callable[..., dict]) -> Callable[..., dict]:
        @functools.wraps(bench)
        def run(args) -> dict:
            with work_dir(getattr(args, option)) as work:
                return bench(args, work)
        return run
    return wrap


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


# runs a module as __main__ (default: the CLI), then writes this process's peak RSS (VmHWM: the
# high-water mark of its own memory map, which an exec starts afresh) to the file named by the
# environment; the kernel's ru_maxrss of a child would include the benchmark's own memory at the fork
_PEAK_CHILD = """
import atexit, os, runpy, sys
def _peak():
    with open("/proc/self/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    with open(os.environ["LORAGEN_BENCH_PEAK_FILE"], "w") as f:
        f.write(kb)
atexit.register(_peak)
module = sys.argv[1]
sys.argv = [module, *sys.argv[2:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def run_child(args: list[str], what: str, module: str = "loragen_mobile", python: str | None = None) -> dict:
    """``python -m MODULE ARGS`` in a child process (default: ``loragen ARGS`` with this interpreter):
    its wall seconds and peak RSS in bytes (the child's own high-water mark). A failure raises with
    the child's last stderr line."""
    import subprocess
    import sys
    import tempfile

    from ..errors import LoragenError

    with tempfile.TemporaryDirectory(prefix="loragen-bench-") as d:
        peak_file = Path(d) / "peak"
        t0 = time.perf_counter()
        proc = subprocess.run([python or sys.executable, "-c", _PEAK_CHILD, module, *args], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, env={**os.environ, "LORAGEN_BENCH_PEAK_FILE": str(peak_file)})
        secs = time.perf_counter() - t0
        if proc.returncode != 0:
            raise LoragenError(f"{what} failed: {_child_failure(proc.returncode, proc.stderr)}")
        return {"s": secs, "peak_rss_bytes": int(peak_file.read_text()) * 1024}


def _child_failure(returncode: int, stderr: bytes) -> str:
    """Why a child failed: the signal that killed it (its stderr then ends wherever it stopped, often
    in a warning's source line), or its last stderr line (the exception of a traceback)."""
    import signal

    if returncode < 0:
        sig = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        oom = "; on Linux usually the kernel's out-of-memory killer (see dmesg)" if sig == "SIGKILL" else ""
        return f"killed by {sig}{oom}"
    err = stderr.decode(errors="replace").strip().splitlines()
    return err[-1] if err else f"exit status {returncode}"


def export_child(model_dir: Path, out: Path, backend: str, scheme: str | None, max_context: int,
                 extra: tuple = ()) -> dict:
    """`loragen export` in a child process: seconds and the child's peak RSS (bytes). A child also keeps
    the benchmark's process clean: after an in-process torch.export of the Llama wrapper, eager
    transformers forwards in the same process were ~150x slower (seen with torch 2.13)."""
    r = run_child(["export", "--backend", backend, "--model", str(model_dir), "--out", str(out), "--max-context",
                   str(max_context), "--no-progress", *map(str, extra)] + (["--quantize", scheme] if scheme else []),
                  f"export {backend} {scheme or 'unquantized'}")
    return {"export_s": r["s"], "export_peak_rss_bytes": r["peak_rss_bytes"]}


def large_preset(preset: str) -> bool:
    """A preset of published shapes (not ``tiny``), e.g. tinyllama-1.1b, llama-3.2-1b, gemma-2b: its
    model directory is written in fp16 (half the disk and the load memory; exports still run in their
    own precision), and some benchmarks skip in-process timings."""
    from ..models import PRESETS

    return preset in PRESETS and not PRESETS[preset].tiny


def preset_model_dir(work: Path, preset: str, min_positions: int = 0) -> Path:
    """WORK/model-PRESET, the preset's random-weight model directory, written when missing (with
    ``max_position_embeddings`` raised to ``min_positions`` where the preset's is lower)."""
    import torch

    from ..models import init_model_dir

    d = work / f"model-{preset}"
    if not d.exists():
        init_model_dir(preset, d, dtype=torch.float16 if large_preset(preset) else torch.float32,
                       min_positions=min_positions)
    return d


def preset_adapter(preset: str, rank: int, seed: int = 0):
    """A random rank-``rank`` LoRA (alpha = rank) of the preset's default targets, sized from the
    config alone (a meta-device model: no weights are built, whatever the shape)."""
    import torch
    from transformers import AutoModelForCausalLM

    from ..lora import random_adapter
    from ..models import preset_config, target_module_names

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(preset_config(preset))
    return random_adapter(model, target_module_names(model), r=rank, alpha=rank, seed=seed)


def shared_export(work: Path, preset: str, backend: str, scheme: str | None = None, max_context: int = 128,
                  slots: int = 0, adapter: Path | None = None, dtype: str = "fp32") -> tuple[Path, dict]:
    """The artifact WORK/PRESET-BACKEND-SCHEME[-fp16][-slotsR | -unmerged], `loragen export` of
    WORK/model-PRESET in a child process, or the one an earlier benchmark wrote in the same work
    directory: the benchmarks that take a work directory share their artifacts through here, so
    `loragen bench all --work-dir W` exports each once. Returns the directory and its figures: export
    seconds and peak RSS (kept beside it in NAME.export.json, absent for an artifact this code did not
    export) and bytes. ``adapter``: a PEFT adapter kept unmerged in the graph."""
    from ..errors import LoragenError
    from ..exporters import read_artifact

    name = f"{preset}-{backend}-{scheme or 'unquantized'}" + ("" if dtype == "fp32" else f"-{dtype}") + \
        (f"-slots{slots}" if slots else "") + \
        ("-unmerged" if adapter is not None else "")
    d = work / name
    if d.exists():
        have = read_artifact(d).meta.get("max_context")
        if have != max_context:
            raise LoragenError(f"{d} was exported with max context {have}, this run asks for {max_context}; give "
                               f"another work directory or remove it", code="usage")
    extra = (("--adapter-slots", slots) if slots else ()) + (("--unmerged-adapter", adapter) if adapter else ()) + \
        (("--dtype", dtype) if dtype != "fp32" else ())
    return d, cached_artifact(d, lambda out: export_child(preset_model_dir(work, preset, max_context), out, backend,
                                                          scheme, max_context, extra))


def cached_artifact(d: Path, make: Callable[[Path], dict]) -> dict:
    """The figures of the artifact ``d``: ``make(d)`` exports it when missing and returns its export
    figures, which are kept beside it (D.export.json) so that a reused artifact keeps them; plus its
    bytes."""
    figures = d.with_name(d.name + ".export.json")
    if not d.exists():
        figures.write_text(json.dumps(make(d)))
    return {**(json.loads(figures.read_text()) if figures.exists() else {}), "artifact_bytes": dir_bytes(d)}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def write_json(result: dict, out: str | os.PathLike) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out, overwrite=True) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")
    return out
