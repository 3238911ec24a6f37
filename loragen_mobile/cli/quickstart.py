"""loragen quickstart: run the whole pipeline on the built-in tiny presets and print a report."""

from . import add_verb

EXAMPLES = """
  loragen quickstart --out quickstart-out
  loragen quickstart --out quickstart-out --fast
"""


def register(sub):
    p = add_verb(sub, "quickstart", "run the end-to-end pipeline on the tiny presets and write a report", EXAMPLES)
    p.add_argument("--out", default="quickstart-out", help="output directory (new or empty)")
    p.add_argument("--fast", action="store_true", help="smaller budgets (about 3 minutes on 2 cores)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args):
    from ..quickstart import format_table, run_quickstart

    report = run_quickstart(args.out, fast=args.fast, seed=args.seed)
    print(format_table(report))
    print(f"report: {args.out}/report.json")
