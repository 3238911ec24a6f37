"""loragen bench: every benchmark behind one verb; each writes JSON (and PNG where it helps)."""

import argparse
import importlib

from ..bench import BENCHES
from . import add_verb

EXAMPLES = """
  loragen bench merge --out bench-out/merge.json
  loragen bench merge --dtypes fp16 --repeats 3
  loragen bench bundle --presets tiny-llama --backends executorch,onnx
  loragen bench speedup --out bench-out/speedup.json
  loragen bench serve --concurrency 1,8,32 --out bench-out/serve.json
  loragen bench peers --backends onnx   # ours vs onnxruntime-genai's model builder (optimum-executorch: executorch)
  loragen bench cli --out bench-out/cli.json     # loragen --help start-up time
  loragen bench all --report docs/results.md        # every benchmark, one markdown report
"""


def register(sub):
    p = add_verb(sub, "bench", "run a benchmark (JSON + plots); never part of the tests", EXAMPLES)
    bsub = p.add_subparsers(dest="bench", metavar="BENCH", required=True)
    for name, mod in BENCHES.items():
        m = importlib.import_module(f"loragen_mobile.bench.{mod}")
        bp = bsub.add_parser(name, help=m.__doc__.strip().splitlines()[0], description=m.__doc__,
                             formatter_class=argparse.RawDescriptionHelpFormatter)
        m.add_arguments(bp)
        bp.set_defaults(func=_runner(m.run))


def _runner(fn):
    def run(args):
        fn(args)  # the benchmark writes its JSON/PNG and prints a summary; its dict is for library use
        return 0

    return run
