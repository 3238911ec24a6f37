"""Merge speed: a rank-16 FFN LoRA into every layer of the tinyllama-1.1b shapes.

Compares loragen's merge (fp64 accumulation, NaN/Inf check) with a plain tensor copy of the
same bytes and with PEFT's merge_and_unload, in fp32 and fp16. Effective GB/s counts the bytes
of W read plus W written. Writes JSON and a PNG bar chart.
"""

from __future__ import annotations

from pathlib import Path


def add_arguments(p):
    p.add_argument("--preset", default="tinyllama-1.1b", help="model shapes to use (default tinyllama-1.1b)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--dtypes", default="fp32,fp16", help="comma-separated: fp32, fp16, bf16")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="bench-out/merge.json")



def _ffn_stack(cfg, dtype):
    """Just the Linear modules the LoRA touches, named as in the real model (no embeddings)."""
    import torch
    from torch import nn

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False, dtype=dtype)
            self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False, dtype=dtype)
            self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False, dtype=dtype)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = MLP()

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(Block() for _ in range(cfg.num_hidden_layers))

    class Stack(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Inner()

    with torch.no_grad():
        torch.manual_seed(0)
        stack = Stack()
        for p in stack.parameters():
            p.normal_(0, 0.02)
    return stack


def run(args) -> dict:
    import copy

    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm import tqdm

    from ..lora import merged_tensors, random_adapter
    from ..models import parse_dtype, preset_config, target_module_names
    from . import machine_info, time_call, write_json

    cfg = preset_config(args.preset)
    result = {"bench": "merge", "preset": args.preset, "rank": args.rank, "machine": machine_info(), "dtypes": {}}
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    for name in tqdm(dtypes, desc="merge bench", unit="dtype"):
        dtype = parse_dtype(name)
        stack = _ffn_stack(cfg, dtype)
        names = target_module_names(stack)
        adapter = random_adapter(stack, names, r=args.rank, alpha=2 * args.rank, seed=1, dtype=dtype)
        weights = {f"{n}.weight": stack.get_submodule(n).weight.detach() for n in names}
        nbytes = sum(w.numel() * w.element_size() for w in weights.values())

        ours = time_call(lambda: merged_tensors(weights, adapter), args.repeats)
        copy_t = time_call(lambda: {k: w.clone() for k, w in weights.items()}, args.repeats)

        def peft_merge():
            m = copy.deepcopy(stack)  # not timed separately: subtract a deepcopy below
            pm = get_peft_model(m, LoraConfig(r=args.rank, lora_alpha=2 * args.rank,
                                              target_modules=["gate_proj", "up_proj", "down_proj"], init_lora_weights=False))
            return pm

        # time PEFT's merge_and_unload alone: build fresh PEFT models outside the timer
        peft_secs = []
        for i in range(args.repeats + 1):
            pm = peft_merge()
            import time

            t0 = time.perf_counter()
            pm.merge_and_unload()
            if i:  # first is warm-up
                peft_secs.append(time.perf_counter() - t0)
            del pm
        import statistics

        peft = {"median_s": statistics.median(peft_secs), "min_s": min(peft_secs), "max_s": max(peft_secs), "runs_s": peft_secs}
        moved = 2 * nbytes / 1e9
        entry = {"weight_bytes": nbytes, "tensors": len(weights)}
        for label, t in (("loragen", ours), ("copy", copy_t), ("peft_merge_and_unload", peft)):
            entry[label] = {**t, "effective_GBps": moved / t["median_s"]}
        entry["loragen_vs_peft_speedup"] = peft["median_s"] / ours["median_s"]
        entry["loragen_vs_copy_ratio"] = ours["median_s"] / copy_t["median_s"]
        result["dtypes"][name] = entry
        del stack, weights, adapter
    out = write_json(result, args.out)
    _plot(result, Path(out).with_suffix(".png"))
    for name, e in result["dtypes"].items():
        print(f"{name}: loragen {e['loragen']['median_s']:.3f}s ({e['loragen']['effective_GBps']:.1f} GB/s), "
              f"copy {e['copy']['median_s']:.3f}s, peft {e['peft_merge_and_unload']['median_s']:.3f}s; "
              f"{e['loragen_vs_peft_speedup']:.2f}x PEFT, {e['loragen_vs_copy_ratio']:.2f}x copy time")
    print(f"wrote {out}")
    return result


def _plot(result, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = ["loragen", "copy", "peft_merge_and_unload"]
    dts = list(result["dtypes"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    w = 0.8 / len(labels)
    for i, lab in enumerate(labels):
        ax.bar([j + i * w for j in range(len(dts))], [result["dtypes"][d][lab]["median_s"] for d in dts], w, label=lab)
    ax.set_xticks([j + w for j in range(len(dts))], dts)
    ax.set_ylabel("seconds (median)")
    ax.set_title(f"merge rank-{result['rank']} FFN LoRA, {result['preset']} shapes")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
