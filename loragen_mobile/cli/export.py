"""loragen export: turn a Hugging Face model directory into an on-device artifact."""

from . import add_verb

EXAMPLES = """
  loragen export --recipe export/tiny-llama/executorch-xnnpack.yaml --model models/tiny-llama --out out/tl-et
  loragen export --backend onnx --model models/tiny-gemma --out out/tg-onnx --max-context 256
  loragen export --backend coreml --model models/tiny-llama --out out/tl-coreml      # fp16, iOS 18, stateful
"""


def register(sub):
    p = add_verb(sub, "export", "export a model to ExecuTorch (.pte/.ptd), ONNX or Core ML with a KV cache",
                 EXAMPLES)
    p.add_argument("--model", required=True, help="Hugging Face model directory (llama or gemma)")
    p.add_argument("--out", required=True, help="new artifact directory to create (must not exist)")
    src = p.add_argument_group("what to export (a recipe, a backend, or both: options override the recipe)")
    src.add_argument("--recipe", help="YAML recipe, e.g. export/tiny-llama/onnx.yaml")
    src.add_argument("--backend", choices=["executorch", "onnx", "coreml"])
    p.add_argument("--max-context", type=int, help="KV-cache length in tokens (default: recipe or 128)")
    p.add_argument("--dtype", choices=["fp32", "fp16"],
                   help="precision (default: recipe, else fp32; Core ML defaults to fp16)")
    p.add_argument("--quantize", help="weight quantization (none implemented yet; reserved)")
    p.add_argument("--targets", help="comma-separated LoRA target modules whose weights become swap slots "
                                      "(default gate_proj,up_proj,down_proj)")
    p.add_argument("--unmerged-adapter", help="PEFT adapter to keep UNMERGED in the graph (the conventional "
                                               "LoRA deployment; for comparisons, e.g. loragen bench speedup)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args):
    from ..errors import LoragenError
    from ..exporters import export
    from ..models import parse_targets

    if not args.recipe and not args.backend:
        raise LoragenError("give --recipe FILE or --backend executorch|onnx|coreml")
    art = export(args.model, args.out, backend=args.backend, recipe=args.recipe, max_context=args.max_context,
                 quantize=args.quantize, targets=parse_targets(args.targets) if args.targets else None,
                 dtype=args.dtype, progress=not args.no_progress, adapter=args.unmerged_adapter)
    m = art.meta
    print(f"wrote {m['backend']} artifact to {art.path} ({m['precision']}, max context {m['max_context']}, "
          f"{len(m['swap_slots'])} swap slots, fingerprint {m['fingerprint'][:16]})")
