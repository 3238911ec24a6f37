"""CLI start-up: wall time of `loragen --help` and every `loragen VERB --help`, and what they print
on stderr and import (help must be instant: no torch, transformers or executorch).

  loragen bench cli --out bench-out/cli.json
  loragen bench cli --repeats 20
"""

from __future__ import annotations

import re
import statistics
import subprocess
import sys
import time

from ..errors import LoragenError
from . import machine_info, write_json

HEAVY = ("torch", "transformers", "executorch", "onnxruntime", "coremltools")

# prints, after the command's own work, which heavy modules the process imported
_PROBE = ("import sys, runpy\n"
          "sys.argv = ['loragen', *sys.argv[1:]]\n"
          "try:\n"
          "    runpy.run_module('loragen_mobile', run_name='__main__')\n"
          "except SystemExit:\n"
          "    pass\n"
          f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)\n")


def add_arguments(p):
    p.add_argument("--out", default="bench-out/cli.json", help="JSON output")
    p.add_argument("--repeats", type=int, default=10, help="runs per command (after one warm-up run)")


def _time(argv: list[str], repeats: int) -> dict:
    secs, stderr = [], b""
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        r = subprocess.run(argv, capture_output=True)
        dt = time.perf_counter() - t0
        if i:
            secs.append(dt)
        stderr = r.stderr
    return {"median_s": statistics.median(secs), "min_s": min(secs), "max_s": max(secs), "runs_s": secs,
            "returncode": r.returncode, "stderr_bytes": len(stderr)}


def cli_verbs(exe: list[str]) -> list[str]:
    """The verbs ``loragen --help`` lists (read from the help text, as a user sees them)."""
    out = subprocess.run(exe + ["--help"], capture_output=True, text=True, check=True).stdout
    section = out.split("\nverbs:\n", 1)[1]
    return re.findall(r"^    ([a-z][a-z-]*)", section, flags=re.M)


def run(args) -> dict:

    if args.repeats < 1:
        raise LoragenError("--repeats must be at least 1", code="usage")
    exe = [sys.executable, "-m", "loragen_mobile"]
    commands = [["--help"]] + [[v, "--help"] for v in cli_verbs(exe)]
    rows = {}
    for cmd in commands:
        key = "loragen " + " ".join(cmd)
        rows[key] = _time(exe + cmd, args.repeats)
        probe = subprocess.run([sys.executable, "-c", _PROBE, *cmd], capture_output=True, text=True)
        heavy = [ln for ln in probe.stderr.splitlines() if ln.startswith("HEAVY=")]
        rows[key]["heavy_imports"] = [m for m in heavy[-1][6:].split(",") if m] if heavy else None
        print(f"{key:32s} {rows[key]['median_s'] * 1e3:7.0f} ms  stderr {rows[key]['stderr_bytes']} B  "
              f"heavy imports: {rows[key]['heavy_imports'] or 'none'}")
    result = {"machine": machine_info(), "repeats": args.repeats, "commands": rows}
    write_json(result, args.out)
    print(f"wrote {args.out}")
    return result
