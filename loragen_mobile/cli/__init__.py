"""The ``loragen`` command: one thin module per verb (argument parsing, then one library call).

Each verb module defines ``register(subparsers)``, which adds its parser and sets ``func``.
Heavy imports (torch, exporters) happen inside the verb's ``run`` so ``loragen --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import LoragenError

# Verb modules, in the order `loragen --help` lists them.
VERBS = [
    "init_model",
    "data", "train_edge", "train", "generate", "eval",
    "merge",
    "bench",
    "quickstart",
    "export", "run", "validate",
    "bundle",
    "serve",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="loragen",
        description="Specialize small on-device language models from a task description (LoRA-Gen) "
        "and ship them to phones.",
        epilog="Run 'loragen VERB --help' for a verb's options and examples.",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"loragen-mobile {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", title="verbs")
    for name in VERBS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def add_verb(sub, name: str, help: str, examples: str) -> argparse.ArgumentParser:
    """Create a verb's parser with its one-line help and an examples epilog."""
    return sub.add_parser(
        name, help=help, description=help, epilog="examples:\n" + examples.strip("\n"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        rc = args.func(args)
    except LoragenError as e:
        print(f"loragen: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("loragen: interrupted", file=sys.stderr)
        return 130
    return int(rc or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
