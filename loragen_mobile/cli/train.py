"""loragen train: train the LoRA-Gen generator (single process, or under torchrun)."""

from . import add_verb

EXAMPLES = """
  loragen train --config configs/tiny.yaml --edge models/tiny-llama-edge --data data/train.jsonl --out runs/gen
  loragen train --config configs/tiny.yaml --edge models/tiny-llama-edge --data data/train.jsonl --out runs/gen --resume
  torchrun --nproc_per_node 2 -m loragen_mobile train --config configs/tiny.yaml \\
      --edge models/tiny-llama-edge --data data/train.jsonl --out runs/gen-ddp
"""


def register(sub):
    p = add_verb(sub, "train", "train the generator (cloud model + meta tokens + routed LoRA experts)", EXAMPLES)
    p.add_argument("--config", required=True, help="YAML config (configs/tiny.yaml, configs/tinyllama-1.1b.yaml, ...)")
    p.add_argument("--edge", required=True, help="edge model directory the LoRAs are generated for (frozen)")
    p.add_argument("--data", required=True, help="JSONL training records (docs/data-format.md)")
    p.add_argument("--out", required=True, help="run directory (checkpoints, log, the trained generator)")
    p.add_argument("--cloud", help="override the config's cloud model: 'edge', a preset or a local HF directory")
    p.add_argument("--max-steps", type=int, help="override the config's max_steps")
    p.add_argument("--save-every", type=int, help="checkpoint every N steps")
    p.add_argument("--seed", type=int, help="override the config's seed (initialisation and data order)")
    p.add_argument("--shuffle-lists", action="store_const", const=True,
                   help="set the config's shuffle_lists: each step lists the descriptions' tool definitions in "
                        "a new order")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoint.pt exactly")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args):
    from . import usage_error

    for opt, v in (("--max-steps", args.max_steps), ("--save-every", args.save_every)):
        if v is not None and v < 1:
            raise usage_error(f"{opt} must be at least 1, got {v}")
    from ..generator import load_config, train

    cfg = load_config(args.config, {"cloud": args.cloud, "max_steps": args.max_steps, "save_every": args.save_every,
                                    "seed": args.seed, "shuffle_lists": args.shuffle_lists})
    out = train(cfg, args.edge, args.data, args.out, resume=args.resume, progress=not args.no_progress)
    print(f"generator written to {out}")
