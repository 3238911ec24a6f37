"""The paper's comparison: prompt + unmerged LoRA vs LoRA-Gen merged without the prompt.

For the same edge model, on ExecuTorch (XNNPACK) and onnxruntime:
  conventional  a few-shot system prompt of P tokens + the user input, through a graph that keeps a
                rank-16 LoRA unmerged on the FFN (what a conventional LoRA deployment runs);
  loragen       the user input alone, through the graph with the LoRA merged into the weights.
Measured: prefill (= time to first token) and prefill + a short answer, medians and spread over
repeated runs, for P from 100 to 2,000 tokens. Ratios are the result; absolute times only go with
the machine they came from. Random weights: timing does not depend on them, so the merged graph is
timed on the base model's artifact (same ops and shapes), the one the other benchmarks of a shared
--work-dir export.

  loragen bench speedup --out bench-out/speedup.json
  loragen bench speedup --preset tinyllama-1.1b --prompt-tokens 100,500,1000 --repeats 3   # long
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path


def add_arguments(p):
    p.add_argument("--preset", default="tiny-llama", help="edge preset (any of `loragen init-model --help`, e.g. tiny-llama, tiny-gemma2)")
    p.add_argument("--prompt-tokens", default="100,250,500,1000,2000", help="system prompt lengths (comma-separated)")
    p.add_argument("--input-tokens", type=int, default=16, help="user input length")
    p.add_argument("--answer-tokens", type=int, default=16, help="decoded answer length for the end-to-end time")
    p.add_argument("--rank", type=int, default=16, help="rank of the unmerged LoRA")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--backends", default="executorch,onnx")
    p.add_argument("--max-context", type=int, help="KV-cache length of both graphs (default: the longest prompt + "
                                                   "input + answer + 8)")
    p.add_argument("--work-dir", help="keep the model and the exported artifacts here and reuse them on the next run "
                                      "(the merged graph is the one the other benchmarks export from this directory)")
    p.add_argument("--out", default="bench-out/speedup.json", help="JSON output (PNG written beside it)")


def _time(runner, ids: list[int], answer: int, repeats: int) -> dict:
    pre, e2e = [], []
    for _ in range(repeats + 1):
        runner.reset()
        t0 = time.perf_counter()
        tok = int(runner.prefill(ids).argmax())
        t1 = time.perf_counter()
        for _ in range(answer):
            tok = int(runner.decode(tok).argmax())
        t2 = time.perf_counter()
        pre.append(t1 - t0)
        e2e.append(t2 - t0)
    pre, e2e = pre[1:], e2e[1:]  # the first run warms the runtime up
    return {"prefill_ms": 1e3 * statistics.median(pre), "prefill_ms_min": 1e3 * min(pre),
            "prefill_ms_max": 1e3 * max(pre), "e2e_ms": 1e3 * statistics.median(e2e),
            "e2e_ms_min": 1e3 * min(e2e), "e2e_ms_max": 1e3 * max(e2e)}


def run(args) -> dict:
    from tqdm import tqdm

    from ..errors import LoragenError
    from ..exporters import get_exporter
    from ..lora import save_peft_adapter
    from . import machine_info, preset_adapter, preset_model_dir, shared_export, work_dir, write_json

    prompts = sorted({int(x) for x in args.prompt_tokens.split(",") if x.strip()})
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if not prompts or min(prompts) < 1 or args.repeats < 1 or args.input_tokens < 1:
        raise LoragenError("--prompt-tokens, --input-tokens and --repeats must be positive", code="usage")
    bad = [b for b in backends if b not in ("executorch", "onnx")]
    if bad:
        raise LoragenError(f"speedup runs on executorch and onnx, not {bad}", code="usage")
    need = max(prompts) + args.input_tokens + args.answer_tokens + 8
    ctx = args.max_context or need
    if ctx < need:
        raise LoragenError(f"--max-context {ctx} is below the {need} tokens of the longest prompt + input + answer",
                           code="usage")
    result = {"bench": "speedup", "preset": args.preset, "rank": args.rank, "input_tokens": args.input_tokens,
              "answer_tokens": args.answer_tokens, "repeats": args.repeats, "max_context": ctx,
              "machine": machine_info(), "backends": {}}
    with work_dir(args.work_dir) as work:
        # random weights: the merged graph has the base model's shapes and ops, so the base artifact
        # times LoRA-Gen's merged model; the conventional graph keeps a random rank-r LoRA unmerged
        base = preset_model_dir(work, args.preset, ctx)
        adapter = work / f"adapter-{args.preset}-r{args.rank}"
        if not adapter.exists():
            save_peft_adapter(preset_adapter(args.preset, args.rank, seed=1), adapter, base_model=str(base))
        bar = tqdm(total=len(backends) * (2 + len(prompts)), desc="speedup bench", unit="step")
        for b in backends:
            bar.set_postfix_str(f"{b}: export prompt + unmerged LoRA")
            conv_dir, conv_e = shared_export(work, args.preset, b, None, ctx, adapter=adapter)
            bar.update()
            bar.set_postfix_str(f"{b}: export merged")
            ours_dir, ours_e = shared_export(work, args.preset, b, None, ctx)
            bar.update()
            exports = {"conventional": conv_e, "loragen": ours_e}
            # one runner at a time: at Gemma-2B an ExecuTorch program is 10 GB of packed weights in
            # this process, and two were more than the 24 GB machine has
            ours = get_exporter(b).open_runner(ours_dir)
            user = [1] + [40 + (i % 200) for i in range(args.input_tokens - 1)]
            t_ours = _time(ours, user, args.answer_tokens, args.repeats)
            ours = None
            conv = get_exporter(b).open_runner(conv_dir)
            rows = []
            for p in prompts:
                bar.set_postfix_str(f"{b}: prompt {p}")
                prompt = [1] + [40 + (i * 7 % 200) for i in range(p)] + user[1:]
                t_conv = _time(conv, prompt, args.answer_tokens, args.repeats)
                rows.append({"prompt_tokens": p, "conventional": t_conv, "loragen": t_ours,
                             "input_tokens": {"conventional": len(prompt), "loragen": len(user)},
                             "prefill_speedup": t_conv["prefill_ms"] / t_ours["prefill_ms"],
                             "e2e_speedup": t_conv["e2e_ms"] / t_ours["e2e_ms"],
                             "compression_ratio": len(prompt) / len(user)})
                bar.update()
            result["backends"][b] = rows
            result.setdefault("exports", {})[b] = exports
            write_json(result, args.out)  # each backend's rows as soon as they are measured
            conv = None
        bar.close()
    out = write_json(result, args.out)
    _plot(result, Path(out).with_suffix(".png"))
    print(format_table(result))
    print(f"wrote {out} and {Path(out).with_suffix('.png')}")
    return result


def format_table(result: dict) -> str:
    lines = [f"{'backend':<11} {'prompt':>6} {'conv prefill ms':>16} {'LoRA-Gen ms':>12} {'prefill x':>9} {'e2e x':>7}"]
    for b, rows in result["backends"].items():
        for r in rows:
            lines.append(f"{b:<11} {r['prompt_tokens']:>6} {r['conventional']['prefill_ms']:>16.2f} "
                         f"{r['loragen']['prefill_ms']:>12.2f} {r['prefill_speedup']:>9.1f} {r['e2e_speedup']:>7.2f}")
    return "\n".join(lines)


def _plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for b, rows in result["backends"].items():
        x = [r["prompt_tokens"] for r in rows]
        axes[0].errorbar(x, [r["conventional"]["prefill_ms"] for r in rows],
                         yerr=[[r["conventional"]["prefill_ms"] - r["conventional"]["prefill_ms_min"] for r in rows],
                               [r["conventional"]["prefill_ms_max"] - r["conventional"]["prefill_ms"] for r in rows]],
                         marker="o", label=f"{b}: prompt + unmerged LoRA")
        axes[0].axhline(rows[0]["loragen"]["prefill_ms"], linestyle="--", color=axes[0].lines[-1].get_color(),
                        label=f"{b}: LoRA-Gen, no prompt")
        axes[1].plot(x, [r["prefill_speedup"] for r in rows], marker="o", label=f"{b}: time to first token")
        axes[1].plot(x, [r["e2e_speedup"] for r in rows], marker="s", linestyle=":",
                     label=f"{b}: + {result['answer_tokens']}-token answer")
    axes[0].set(xlabel="system prompt tokens", ylabel="prefill ms (median, min-max)", xscale="log", yscale="log",
                title=f"{result['preset']}: prefill")
    axes[1].set(xlabel="system prompt tokens", ylabel="speedup (x)", xscale="log", yscale="log",
                title="LoRA-Gen speedup")
    for ax in axes:
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
