"""loragen eval: LoRA-Gen vs edge + prompt, edge without prompt and a per-task LoRA."""

from . import add_verb

EXAMPLES = """
  loragen data make --suite all --split unseen --out data/unseen.jsonl
  loragen eval --generator runs/gen --data data/unseen.jsonl --out reports/unseen.json
  loragen eval --generator runs/gen --data data/seen.jsonl --train-data data/train.jsonl --out reports/seen.json
"""


def register(sub):
    p = add_verb(sub, "eval", "evaluate a generator against the baselines (accuracy, input tokens)", EXAMPLES)
    p.add_argument("--generator", required=True, help="trained generator run directory")
    p.add_argument("--data", required=True, help="JSONL records; each task's first half adapts the per-task LoRA")
    p.add_argument("--out", required=True, help="report JSON to write")
    p.add_argument("--train-data", help="the training JSONL: scored examples that also occur there are left out "
                                        "(and counted)")
    p.add_argument("--methods", help="comma-separated subset of: edge_prompt, edge_no_prompt, task_lora, loragen, "
                                     "and the controls loragen_other_task, loragen_empty, mean_adapter (default: all)")
    p.add_argument("--lora-steps", type=int, help="training steps of the per-task LoRA baseline (default 150)")
    p.add_argument("--weight-encoding", metavar="ID",
                   help="evaluate the edge model with the weights a quantized export of the encoding's backend "
                        "stores (decoder linears; the output head too on ExecuTorch and ONNX) as it stores them; "
                        "ID is an encoding of docs/quantization.md, e.g. ort-int8-b128. LoRAs are merged in full "
                        "precision and quantized, as a merged bundle is")
    p.set_defaults(func=run)


def run(args):
    from ..data import read_jsonl
    from ..generator.evaluate import LORA_STEPS, METHODS, evaluate, format_report, write_report

    read_jsonl(args.data)  # a bad data file fails before the generator is loaded
    methods = tuple(m.strip() for m in args.methods.split(",")) if args.methods else METHODS
    report = evaluate(args.generator, args.data, methods=methods,
                      lora_steps=LORA_STEPS if args.lora_steps is None else args.lora_steps,
                      weight_encoding=args.weight_encoding, train_data=args.train_data)
    write_report(report, args.out)
    print(format_report(report))
    print(f"report written to {args.out}")
