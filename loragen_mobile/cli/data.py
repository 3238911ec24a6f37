"""loragen data: write the built-in synthetic task suites as JSONL (docs/data-format.md)."""

from . import add_verb

EXAMPLES = """
  loragen data make --suite reasoning --split train --out data/reasoning-train.jsonl --seed 0
  loragen data make --suite tools --split unseen --out data/tools-unseen.jsonl
  loragen data make --suite all --split train --out data/train.jsonl      # both suites in one file
"""


def register(sub):
    p = add_verb(sub, "data", "write built-in task suites (reasoning, tools) as JSONL", EXAMPLES)
    ds = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    m = ds.add_parser("make", help="generate a suite split deterministically from a seed")
    m.add_argument("--suite", required=True, choices=["reasoning", "tools", "all"])
    m.add_argument("--split", required=True, choices=["train", "seen", "unseen"])
    m.add_argument("--out", required=True, help="JSONL file to write (must not exist)")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--per-task", type=int, default=None,
                   help="examples per task (default 160 reasoning, 16 tools for train, 16 for seen/unseen: 8 adapt + 8 scored)")
    m.set_defaults(func=run)


def run(args):
    from ..data import make_records_file

    n = make_records_file(args.suite, args.split, args.out, seed=args.seed, per_task=args.per_task)
    print(f"wrote {n} records to {args.out}")
