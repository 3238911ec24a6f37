"""loragen train-edge: teach a (tiny) edge model the seen tasks with their system prompts."""

from . import add_verb

EXAMPLES = """
  loragen init-model --preset tiny-llama --out models/tiny-llama
  loragen data make --suite all --split train --out data/train.jsonl
  loragen train-edge --model models/tiny-llama --data data/train.jsonl --config configs/tiny.yaml \\
      --out models/tiny-llama-edge
"""


def register(sub):
    p = add_verb(sub, "train-edge", "fine-tune an edge model on tasks WITH their system prompts (the baseline)", EXAMPLES)
    p.add_argument("--model", required=True, help="edge model directory (e.g. from loragen init-model)")
    p.add_argument("--data", required=True, help="JSONL records (docs/data-format.md)")
    p.add_argument("--out", required=True, help="new model directory (must not exist)")
    p.add_argument("--config", help="YAML file; its 'edge' section sets the defaults (configs/tiny.yaml)")
    p.add_argument("--max-steps", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--tokens-per-step", type=int)
    p.add_argument("--seed", type=int)
    p.set_defaults(func=run)


def run(args):
    from . import usage_error

    for opt, v in (("--max-steps", args.max_steps), ("--tokens-per-step", args.tokens_per_step)):
        if v is not None and v < 1:
            raise usage_error(f"{opt} must be at least 1, got {v}")
    if args.lr is not None and not args.lr > 0:
        raise usage_error(f"--lr must be positive, got {args.lr}")
    from ..edge_training import EdgeTrainConfig, train_edge

    cfg = EdgeTrainConfig.load(args.config, {"max_steps": args.max_steps, "lr": args.lr,
                                             "tokens_per_step": args.tokens_per_step, "seed": args.seed})
    res = train_edge(args.model, args.data, args.out, cfg)
    print(f"trained {args.model} for {res['steps']} steps (final loss {res['final_loss']:.3f}) -> {args.out}")
