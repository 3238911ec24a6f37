"""loragen init-model: write a built-in preset as a standard Hugging Face directory."""

from . import add_verb

EXAMPLES = """
  loragen init-model --preset tiny-llama --out models/tiny-llama
  loragen init-model --preset tiny-gemma --out models/tiny-gemma --seed 1
  loragen init-model --preset tinyllama-1.1b --out models/tl11b --dtype fp16   # real shapes, random weights
"""


# the names of loragen_mobile.models.PRESETS (importing that module loads torch; a test keeps
# this list equal to it)
PRESET_NAMES = ("tiny-llama", "tiny-llama3", "tiny-cloud", "tinyllama-1.1b", "llama-3.2-1b", "tiny-gemma", "gemma-2b",
                "tiny-gemma2", "tiny-gemma3", "gemma-3-1b", "tiny-qwen2", "qwen2.5-0.5b", "tiny-qwen3", "qwen3-0.6b")


def register(sub):
    p = add_verb(sub, "init-model", "write a preset model (config, safetensors, tokenizer) as an HF directory", EXAMPLES)
    p.add_argument("--preset", required=True, choices=PRESET_NAMES)
    p.add_argument("--out", required=True, help="new directory to create (must not exist; missing parents are created)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", default="fp32", help="fp32 (default), fp16 or bf16")
    p.set_defaults(func=run)


def run(args):
    from ..models import init_model_dir, parse_dtype

    out = init_model_dir(args.preset, args.out, seed=args.seed, dtype=parse_dtype(args.dtype))
    print(f"wrote {args.preset} to {out}")
