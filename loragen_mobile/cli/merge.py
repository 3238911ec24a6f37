"""loragen merge: fold a PEFT LoRA adapter into a base model (W' = W + scale * B @ A)."""

from . import add_verb

EXAMPLES = """
  loragen merge --model models/tiny-llama --adapter adapters/task-a --out models/tiny-llama-task-a
"""


def register(sub):
    p = add_verb(sub, "merge", "merge a PEFT LoRA adapter into a model, writing a new HF directory", EXAMPLES)
    p.add_argument("--model", required=True,
                   help="base model: a Hugging Face directory or a Hub id in the local cache (any supported family)")
    p.add_argument("--adapter", required=True, help="PEFT adapter directory (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("--out", required=True, help="new directory for the merged model (must not exist)")
    p.set_defaults(func=run)


def run(args):
    from ..lora import merge_dir

    out = merge_dir(args.model, args.adapter, args.out)
    print(f"merged {args.adapter} into {args.model} -> {out}")
