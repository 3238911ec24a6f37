"""Quantized artifacts: bytes, export time and peak memory per backend and scheme, and bundle bytes.

For each preset, every backend is exported unquantized (the baseline) and with each of its
quantization schemes (`loragen export --help` lists them), each export in a child process whose
peak RSS is read from the kernel (wait4). For each artifact: total bytes, the quantized weights'
stored bytes over their fp32 bytes, and the bytes of a merged and a lora bundle for a rank-16 LoRA
of the default targets. The large shapes (tinyllama-1.1b, gemma-2b; random weights) run only when
named with --presets. Writes JSON and a PNG bar chart.

  loragen bench quant --presets tiny-llama --out bench-out/quant.json
"""

from __future__ import annotations

from pathlib import Path

from . import in_work_dir


def add_arguments(p):
    p.add_argument("--presets", default="tiny-llama,tiny-gemma", help="comma-separated presets")
    p.add_argument("--backends", default="executorch,onnx,coreml")
    p.add_argument("--schemes", help="comma-separated schemes to run, `none` for the unquantized baseline "
                                      "(default: the baseline and every scheme of each backend)")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--max-context", type=int, default=128)
    p.add_argument("--artifacts-dir", help="keep exported artifacts here and reuse them on the next run "
                                           "(default: a temporary directory, removed at the end)")
    p.add_argument("--out", default="bench-out/quant.json")


@in_work_dir("artifacts_dir")
def run(args, work: Path) -> dict:
    import torch
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from tqdm import tqdm

    from ..bundle import build_bundle
    from ..exporters import get_exporter, read_artifact
    from ..lora import LoraAdapter
    from . import machine_info, preset_model_dir, shared_export, write_json

    key = Ed25519PrivateKey.generate()
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    only = {s.strip() for s in args.schemes.split(",")} if args.schemes else None
    jobs = [(p, b, s) for p in presets for b in backends
            for s in (None, *get_exporter(b).schemes) if only is None or (s or "none") in only]
    result = {"bench": "quant", "rank": args.rank, "max_context": args.max_context, "machine": machine_info(),
              "results": {}}
    for preset, backend, scheme in tqdm(jobs, desc="quant bench", unit="export"):
        art_dir, entry = shared_export(work, preset, backend, scheme, args.max_context)
        model_dir = preset_model_dir(work, preset)
        art = read_artifact(art_dir)
        enc = art.meta.get("weight_encoding")
        if enc:
            entry["quantized_weights"] = {"stored_bytes": enc["stored_bytes"], "fp32_bytes": enc["fp32_bytes"],
                                          "ratio": enc["stored_bytes"] / enc["fp32_bytes"], "count": len(enc["params"])}
        # a rank-r LoRA of every swappable weight (shapes from the config; random factors)
        shapes = {s.param: (s.encoding.weight_shape(s.shape) if s.part else list(s.shape))
                  for s in art.slots if s.part in (None, "q")}
        g = torch.Generator().manual_seed(0)
        adapter = LoraAdapter({p[: -len(".weight")]: (torch.randn(args.rank, sh[1], generator=g) * 0.01,
                                                     torch.randn(sh[0], args.rank, generator=g) * 0.01)
                               for p, sh in shapes.items()}, r=args.rank, alpha=args.rank)
        for kind in ("merged", "lora"):
            entry[f"{kind}_bundle_bytes"] = len(build_bundle(art, adapter, kind, private_key=key,
                                                             base_model=model_dir if kind == "merged" else None))
        result["results"].setdefault(preset, {}).setdefault(backend, {})[scheme or "unquantized"] = entry
        write_json(result, args.out)
    out = write_json(result, args.out)
    _plot(result, Path(out).with_suffix(".png"))
    for preset, per in result["results"].items():
        for backend, schemes in per.items():
            for scheme, e in schemes.items():
                q = e.get("quantized_weights")
                print(f"{preset}/{backend}/{scheme}: artifact {e['artifact_bytes'] / 1e6:.1f} MB"
                      + (f", quantized weights {q['ratio']:.3f}x fp32" if q else "")
                      + f", merged bundle {e['merged_bundle_bytes'] / 1e6:.2f} MB, lora {e['lora_bundle_bytes'] / 1e6:.2f} MB")
    print(f"wrote {out}")
    return result


def _plot(result, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, vals = [], []
    for preset, per in result["results"].items():
        for backend, schemes in per.items():
            for scheme, e in schemes.items():
                labels.append(f"{preset}\n{backend}\n{scheme}")
                vals.append(e["artifact_bytes"] / 1e6)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels)), 4))
    ax.bar(range(len(labels)), vals)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("artifact MB")
    ax.set_title("artifact bytes per backend and quantization scheme")
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
