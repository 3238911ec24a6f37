"""loragen eval: LoRA-Gen vs edge + prompt, edge without prompt and a per-task LoRA."""

from . import add_verb

EXAMPLES = """
  loragen data make --suite all --split unseen --out data/unseen.jsonl
  loragen eval --generator runs/gen --data data/unseen.jsonl --out reports/unseen.json
"""


def register(sub):
    p = add_verb(sub, "eval", "evaluate a generator against the baselines (accuracy, input tokens)", EXAMPLES)
    p.add_argument("--generator", required=True, help="trained generator run directory")
    p.add_argument("--data", required=True, help="JSONL records; each task's first half adapts the per-task LoRA")
    p.add_argument("--out", required=True, help="report JSON to write")
    p.add_argument("--methods", help="comma-separated subset of: edge_prompt,edge_no_prompt,task_lora,loragen,loragen_wrong")
    p.add_argument("--lora-steps", type=int, default=60, help="training steps of the per-task LoRA baseline")
    p.add_argument("--weight-encoding", metavar="ID",
                   help="evaluate the edge model with its decoder linear weights as a quantized artifact stores "
                        "them (an encoding of docs/quantization.md, e.g. ort-int8-b128); LoRAs are merged in full "
                        "precision and quantized, as a merged bundle is")
    p.set_defaults(func=run)


def run(args):
    from ..data import read_jsonl
    from ..generator.evaluate import METHODS, evaluate, format_report, write_report

    read_jsonl(args.data)  # a bad data file fails before the generator is loaded
    methods = tuple(m.strip() for m in args.methods.split(",")) if args.methods else METHODS
    report = evaluate(args.generator, args.data, methods=methods, lora_steps=args.lora_steps,
                      weight_encoding=args.weight_encoding)
    write_report(report, args.out)
    print(format_report(report))
    print(f"report written to {args.out}")
