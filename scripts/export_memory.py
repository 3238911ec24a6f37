"""Where an export's memory goes: the process's RSS around each pipeline step and each large library
call inside it (sampled every 0.1 s; "peak" is the largest sample while the call ran, the calls
inside it included), with the anonymous part of the RSS (RssAnon: what the kernel cannot reclaim
without killing; the rest is mapped file pages, reclaimable page cache), then the process's peak
RSS (VmHWM). The artifact is the one `loragen export` writes.

  python scripts/export_memory.py --backend executorch --model W/model-tinyllama-1.1b --out W/et --max-context 1040
  python scripts/export_memory.py --backend onnx --model W/model-llama-3.2-1b --out W/onnx-q --quantize 8da4w-b32
"""

from __future__ import annotations

import argparse
import functools
import inspect
import threading
import time

_stack, _peaks, _anon_peaks = ["start"], {}, {}


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith(field + ":")))


def _status_gib(field: str) -> float:
    return _status_kb(field) / 2**20


def _rss_gib() -> float:
    return _status_gib("VmRSS")


def _sample() -> None:
    while True:
        rss, anon = _rss_gib(), _status_gib("RssAnon")
        for key in set(_stack):  # every running call, outer ones included
            _peaks[key] = max(_peaks.get(key, 0.0), rss)
            _anon_peaks[key] = max(_anon_peaks.get(key, 0.0), anon)
        time.sleep(0.1)


def _traced(fn, label: str):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        before, t0 = _rss_gib(), time.time()
        _stack.append(label)
        _peaks.pop(label, None)
        _anon_peaks.pop(label, None)
        try:
            return fn(*args, **kwargs)
        finally:
            _stack.pop()
            print(f"{label:<42} {time.time() - t0:7.1f} s   RSS before {before:6.2f}   peak "
                  f"{max(_peaks.get(label, 0.0), before):6.2f}   after {_rss_gib():6.2f} GiB   "
                  f"(anonymous: peak {_anon_peaks.get(label, 0.0):6.2f}, after {_status_gib('RssAnon'):6.2f})",
                  flush=True)
    return run


def _trace(owner, *names: str, prefix: str = "") -> None:
    for n in names:
        raw = inspect.getattr_static(owner, n)  # through the MRO, staticmethod/classmethod kept
        kind = type(raw) if isinstance(raw, (staticmethod, classmethod)) else None
        fn = raw.__func__ if kind else raw
        wrapped = _traced(fn, prefix + n)
        setattr(owner, n, kind(wrapped) if kind else wrapped)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=("executorch", "onnx"), required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-context", type=int, default=1040)
    ap.add_argument("--quantize")
    ap.add_argument("--adapter-slots", type=int, default=0)
    args = ap.parse_args()
    threading.Thread(target=_sample, daemon=True).start()

    from loragen_mobile.exporters import get_exporter

    exporter = get_exporter(args.backend)
    _trace(type(exporter), "load", "wrap", "quantize", "lower", "locate_slots", "finish", prefix="step ")
    from loragen_mobile.exporters.pipeline import ExportJob

    _trace(ExportJob, "map_weights", "release_weights")
    if args.backend == "executorch":
        import executorch.exir as exir
        import executorch.exir.program._program as program
        from executorch.exir.backend import backend_api
        from executorch.exir.backend.backend_details import BackendDetails

        import loragen_mobile.exporters.executorch as et

        _trace(et, "_export")
        _trace(exir, "to_edge_transform_and_lower")
        _trace(program, "_gen_edge_manager_for_partitioners")
        _trace(backend_api, "lower_all_submodules_to_backend")  # copies each partition, then preprocesses
        _trace(BackendDetails, "preprocess_multimethod")
        _trace(program.EdgeProgramManager, "to_executorch")
        _trace(program.ExecutorchProgramManager, "write_to_file", "write_tensor_data_to_file")
    else:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

        import loragen_mobile.exporters.onnx as ox

        _trace(ox, "_onnx_export", "_quantize_graph")
        _trace(MatMulNBitsQuantizer, "process")
    exporter.export(args.model, args.out, max_context=args.max_context, quantize=args.quantize,
                    adapter_slots=args.adapter_slots, progress=False)
    kb = _status_kb("VmHWM")
    print(f"process peak RSS (VmHWM): {kb / 2**20:.2f} GiB ({kb} kB); peak anonymous (sampled): "
          f"{max(_anon_peaks.values()):.2f} GiB")


if __name__ == "__main__":
    main()
