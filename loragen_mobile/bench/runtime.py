"""Prefill time and decode tokens/s: ExecuTorch (XNNPACK) vs onnxruntime vs eager PyTorch.

Every runtime gets the same model and the same prompt; decoding is greedy with the KV cache
(eager PyTorch: transformers' DynamicCache). Give existing artifacts with --artifact (repeatable,
plus --model for the eager baseline), or --model / --preset alone to export ExecuTorch and ONNX
artifacts into a temporary directory first. Writes JSON and a PNG bar chart.

  loragen bench runtime --preset tiny-llama --preset tiny-gemma --out bench-out/runtime.json
  loragen bench runtime --model models/tiny-llama --artifact out/tl-et --artifact out/tl-onnx
  loragen bench runtime --tinyllama-1.1b --out bench-out/runtime-1.1b.json   # long: exports 1.1B shapes
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from pathlib import Path


def add_arguments(p):
    p.add_argument("--preset", action="append", default=[],
                   help="built-in preset to create and export (repeatable), e.g. tiny-llama")
    p.add_argument("--model", help="Hugging Face model directory (eager baseline; exported when no --artifact)")
    p.add_argument("--artifact", action="append", default=[], help="existing artifact directory (repeatable)")
    p.add_argument("--tinyllama-1.1b", dest="tinyllama", action="store_true",
                   help="also run TinyLlama-1.1B shapes (random weights; long: two ~4 GB exports)")
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-context", type=int, default=128)
    p.add_argument("--backends", default="executorch,onnx", help="backends to export when none are given")
    p.add_argument("--out", default="bench-out/runtime.json", help="JSON output (PNG written beside it)")


def _time_runner(prefill, decode, prompt, n_decode, repeats):
    pre, dec = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        logits = prefill(prompt)
        t1 = time.perf_counter()
        tok = int(logits.argmax())  # prefill returns the last position's logits [vocab]
        t2 = time.perf_counter()
        for _ in range(n_decode):
            tok = int(decode(tok).argmax())
        t3 = time.perf_counter()
        pre.append(t1 - t0)
        dec.append(t3 - t2)
    return {"prefill_ms": 1e3 * statistics.median(pre),
            "prefill_ms_all": [1e3 * x for x in pre],
            "decode_tokens_per_s": n_decode / statistics.median(dec),
            "decode_ms_per_token": 1e3 * statistics.median(dec) / n_decode}


def bench_model(model_dir, artifacts, prompt_tokens, decode_tokens, repeats):
    import gc

    import torch

    from ..exporters import open_artifact_runner, read_artifact
    from ..exporters.common import Reference
    from ..models import load_model

    torch.manual_seed(0)
    model = load_model(model_dir, dtype=torch.float32)
    vocab = model.config.vocab_size
    prompt = [1] + torch.randint(4, vocab, (prompt_tokens - 1,)).tolist()
    rows = []
    ref = Reference(model)

    def eager_prefill(ids):
        ref.reset()
        return ref.step(ids)[-1]

    with torch.inference_mode():
        _time_runner(eager_prefill, lambda t: ref.step([t])[-1], prompt, 2, 1)  # warm-up
        r = _time_runner(eager_prefill, lambda t: ref.step([t])[-1], prompt, decode_tokens, repeats)
    rows.append({"runtime": "eager-pytorch", **r})
    # one model in memory at a time: the eager model is released before the artifacts open, and each
    # runner before the next (at Gemma-2B each is about 10 GB in this process)
    model = ref = None
    gc.collect()
    for a in artifacts:
        art = read_artifact(a)
        runner = None
        gc.collect()
        runner = open_artifact_runner(a)
        _time_runner(runner.prefill, runner.decode, prompt, 2, 1)
        r = _time_runner(runner.prefill, runner.decode, prompt, decode_tokens, repeats)
        name = {"executorch": "executorch-xnnpack", "onnx": "onnxruntime"}.get(art.backend, art.backend)
        rows.append({"runtime": name, "artifact": Path(a).name, "precision": art.meta["precision"],
                     "adapter_slots": (art.meta.get("adapter_slots") or {}).get("rank", 0), **r})
    return rows


def _plot(results, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    models = list(results)
    runtimes = sorted({r["runtime"] for rows in results.values() for r in rows})
    w = 0.8 / max(1, len(runtimes))
    for k, (key, label) in enumerate((("prefill_ms", "prefill time (ms, lower is better)"),
                                      ("decode_tokens_per_s", "decode tokens/s (higher is better)"))):
        ax = axes[k]
        for j, rt in enumerate(runtimes):
            vals = [next((r[key] for r in results[m] if r["runtime"] == rt), 0.0) for m in models]
            ax.bar([i + j * w for i in range(len(models))], vals, w, label=rt)
        ax.set_xticks([i + w * (len(runtimes) - 1) / 2 for i in range(len(models))])
        ax.set_xticklabels(models)
        ax.set_title(label)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


def run(args) -> dict:
    from ..errors import LoragenError
    from ..models import init_model_dir
    from . import export_child

    if args.prompt_tokens < 1 or args.decode_tokens < 1 or args.repeats < 1:
        raise LoragenError("--prompt-tokens, --decode-tokens and --repeats must be positive")
    if args.prompt_tokens + args.decode_tokens + 2 > args.max_context:
        raise LoragenError("--prompt-tokens + --decode-tokens exceed --max-context")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    presets = list(args.preset) + (["tinyllama-1.1b"] if args.tinyllama else [])
    if not presets and not args.model:
        presets = ["tiny-llama"]
    if args.artifact and not args.model:
        raise LoragenError("--artifact needs --model (the eager baseline)")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    results: dict[str, list] = {}
    with tempfile.TemporaryDirectory(prefix="loragen-bench-") as tmp:
        jobs = []
        if args.model:
            jobs.append((Path(args.model).name, Path(args.model), list(args.artifact)))
        for p in presets:
            jobs.append((p, init_model_dir(p, Path(tmp) / p), []))
        for name, model_dir, arts in jobs:
            if not arts:
                for b in backends:
                    a = Path(tmp) / f"{name}-{b}"
                    export_child(model_dir, a, b, None, args.max_context)
                    arts.append(a)
            results[name] = bench_model(model_dir, arts, args.prompt_tokens, args.decode_tokens, args.repeats)
    report = {"benchmark": "runtime", "prompt_tokens": args.prompt_tokens, "decode_tokens": args.decode_tokens,
              "repeats": args.repeats, "max_context": args.max_context,
              "host": {"machine": platform.machine(), "python": platform.python_version()},
              "results": results}
    out.write_text(json.dumps(report, indent=2) + "\n")
    _plot(results, out.with_suffix(".png"))
    for name, rows in results.items():
        for r in rows:
            print(f"{name:16s} {r['runtime']:20s} prefill {r['prefill_ms']:8.2f} ms   "
                  f"decode {r['decode_tokens_per_s']:8.1f} tok/s")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return report
