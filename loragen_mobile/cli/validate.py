"""loragen validate: compare an exported artifact with its PyTorch model (exit 1 on failure)."""

from . import add_verb

EXAMPLES = """
  loragen validate --artifact out/tl-et --model models/tiny-llama
  loragen validate --artifact out/tl-onnx --model models/tiny-llama --json v.json --junit v.xml
"""


def register(sub):
    p = add_verb(sub, "validate", "check an artifact against its model: logits of prefill and decode steps "
                 "(Core ML: weights and signature read back)", EXAMPLES)
    p.add_argument("--artifact", required=True)
    p.add_argument("--model", required=True, help="the Hugging Face model directory it was exported from")
    p.add_argument("--steps", type=int, default=8, help="decode steps to compare (default 8)")
    p.add_argument("--json", metavar="OUT", help="write the report as JSON")
    p.add_argument("--junit", metavar="OUT.xml", help="write a JUnit XML report (one testcase per check)")
    p.set_defaults(func=run)


def run(args):
    import json
    from pathlib import Path

    from ..errors import LoragenError
    from ..exporters import validate_artifact
    from ..fsutil import atomic_file

    if args.steps < 1:
        raise LoragenError("--steps must be at least 1", code="usage")
    for out in (args.json, args.junit):
        if out and Path(out).is_dir():
            raise LoragenError(f"{out} is a directory", code="exists")
    report = validate_artifact(args.artifact, args.model, steps=args.steps)
    if args.json:
        with atomic_file(args.json, overwrite=True) as tmp:
            tmp.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if args.junit:
        with atomic_file(args.junit, overwrite=True) as tmp:
            tmp.write_text(report.to_junit())
    print(report.summary())
    return 0 if report.ok else 1
