"""loragen export: turn a Hugging Face model directory into an on-device artifact."""

from . import add_verb

EXAMPLES = """
  loragen export --recipe export/tiny-llama/executorch-xnnpack.yaml --model models/tiny-llama --out out/tl-et
  loragen export --backend onnx --model models/tiny-gemma --out out/tg-onnx --max-context 256
  loragen export --backend coreml --model models/tiny-llama --out out/tl-coreml      # fp16, iOS 18, stateful
"""


#: each backend's quantization schemes, for --help (which must not import the exporters; a test
#: checks it against the exporters' own tables)
QUANTIZE_SCHEMES = {"executorch": ("8da4w-g32", "8da4w-g128", "8da8w"),
                    "onnx": ("int4-b32", "int4-b128", "int8-b128", "8da4w-b32"),
                    "coreml": ("int4-b32", "int8")}
QUANTIZE_HELP = "; ".join(f"{b}: {', '.join(s)}" for b, s in QUANTIZE_SCHEMES.items()) + " (docs/quantization.md)"


def register(sub):
    p = add_verb(sub, "export", "export a model to ExecuTorch (.pte/.ptd), ONNX or Core ML with a KV cache",
                 EXAMPLES)
    p.add_argument("--model", required=True,
                   help="a Hugging Face model directory or a Hub id in the local cache "
                        "(llama, gemma, gemma2, gemma3_text, qwen2, qwen3)")
    p.add_argument("--out", required=True, help="new artifact directory to create (must not exist)")
    src = p.add_argument_group("what to export (a recipe, a backend, or both: options override the recipe)")
    src.add_argument("--recipe", help="YAML recipe, e.g. export/tiny-llama/onnx.yaml")
    src.add_argument("--backend", choices=["executorch", "onnx", "coreml"])
    p.add_argument("--max-context", type=int, help="KV-cache length in tokens (default: recipe or 128)")
    p.add_argument("--dtype", choices=["fp32", "fp16"],
                   help="precision (default: recipe, else fp32; Core ML defaults to fp16)")
    p.add_argument("--quantize", metavar="SCHEME", help="quantize the linear weights: " + QUANTIZE_HELP)
    p.add_argument("--targets", help="comma-separated LoRA target modules whose weights become swap slots "
                                      "(default gate_proj,up_proj,down_proj)")
    p.add_argument("--unmerged-adapter", help="PEFT adapter to keep UNMERGED in the graph (the conventional "
                                               "LoRA deployment; for comparisons, e.g. loragen bench speedup)")
    p.add_argument("--adapter-slots", type=int, metavar="RANK",
                   help="ExecuTorch, ONNX: give every target module a run-time LoRA slot of this rank, replaced in "
                        "a loaded program (ExecuTorch: its set_adapter method; ONNX: optional inputs fed with every "
                        "run), so a lora bundle swaps in place")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args):
    from . import usage_error

    if not args.recipe and not args.backend:
        raise usage_error("give --recipe FILE or --backend executorch|onnx|coreml")
    if args.max_context is not None and args.max_context < 8:
        raise usage_error(f"--max-context must be at least 8 tokens, got {args.max_context}")
    if args.targets is not None and not args.targets.replace(",", " ").strip():
        raise usage_error("--targets is empty; give comma-separated module names (e.g. gate_proj,up_proj,down_proj) "
                          "or leave the option out for the defaults")
    if args.adapter_slots is not None and args.adapter_slots < 1:
        raise usage_error(f"--adapter-slots must be a rank of at least 1, got {args.adapter_slots}")
    if args.unmerged_adapter is not None:
        check_adapter_fits(args.model, args.unmerged_adapter)

    from ..exporters import export
    from ..models import parse_targets

    art = export(args.model, args.out, backend=args.backend, recipe=args.recipe, max_context=args.max_context,
                 quantize=args.quantize, targets=parse_targets(args.targets) if args.targets else None,
                 dtype=args.dtype, progress=not args.no_progress, adapter=args.unmerged_adapter,
                 adapter_slots=args.adapter_slots)
    m = art.meta
    print(f"wrote {m['backend']} artifact to {art.path} ({m['precision']}, max context {m['max_context']}, "
          f"{len(m['swap_slots'])} swap slots, fingerprint {m['fingerprint'][:16]})")


def check_adapter_fits(model_dir, adapter_dir) -> None:
    """Refuse (code ``shape``) an adapter whose modules the model lacks or whose B @ A has another shape
    than the weight, reading only the safetensors headers of the model (no weights are loaded)."""
    import json
    from pathlib import Path

    from safetensors import SafetensorError, safe_open

    from ..errors import LoragenError
    from ..lora import load_peft_adapter

    d = Path(model_dir)
    if not d.is_dir():
        raise LoragenError(f"model directory {d} does not exist", code="not-found")
    adapter = load_peft_adapter(adapter_dir)
    try:
        model_type = json.loads((d / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None  # the exporter reports a broken model directory itself
    if adapter.model_type and model_type and adapter.model_type != model_type:
        raise LoragenError(f"adapter {adapter_dir} was made for model_type '{adapter.model_type}', "
                           f"model {d} is '{model_type}'", code="shape")
    shapes: dict[str, tuple[int, ...]] = {}
    try:
        for f in sorted(d.glob("*.safetensors")):
            with safe_open(str(f), "pt") as st:
                for k in st.keys():
                    shapes[k] = tuple(st.get_slice(k).get_shape())
    except (SafetensorError, OSError):
        return  # unreadable weights: the exporter reports them
    if not shapes:
        return
    for name, (a, b) in adapter.factors.items():
        key = f"{name}.weight"
        if key not in shapes:
            raise LoragenError(f"adapter {adapter_dir} targets {name}, which model {d} does not have", code="shape")
        want = (b.shape[0], a.shape[1])
        if shapes[key] != want:
            raise LoragenError(f"adapter {adapter_dir} does not fit model {d}: {key} is {shapes[key]}, "
                               f"the adapter's B @ A is {want}", code="shape")
