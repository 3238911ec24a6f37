"""onnxruntime-genai's decode rate of one ONNX artifact with its genai_config.json as written and with
``session_options.intra_op_num_threads`` set to 1 and 2, each in a fresh process (a 125-token
prompt, 32 greedy tokens, median of 3). The artifact directory is not modified (a temporary copy
of its config, links to the rest).

  python scripts/og_threads.py W/tinyllama-1.1b-onnx-unquantized
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

art = Path(sys.argv[1]).resolve()
CHILD = r'''
import sys, time, statistics
import onnxruntime_genai as og
m = og.Model(sys.argv[1])
ids = list(range(100, 225))
rates = []
for _ in range(3):
    p = og.GeneratorParams(m); p.set_search_options(max_length=len(ids) + 33, do_sample=False)
    g = og.Generator(m, p); g.append_tokens(ids)
    t = time.perf_counter(); n = 0
    while not g.is_done() and n < 32:
        g.generate_next_token(); n += 1
    rates.append((n - 1) / (time.perf_counter() - t))
print(statistics.median(rates))
'''
for threads in (None, 1, 2):
    with tempfile.TemporaryDirectory() as d:
        for f in art.iterdir():
            if f.name != "genai_config.json":
                os.symlink(f, Path(d) / f.name)
        cfg = json.loads((art / "genai_config.json").read_text())
        if threads:
            cfg["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
        (Path(d) / "genai_config.json").write_text(json.dumps(cfg))
        out = subprocess.run([sys.executable, "-c", CHILD, d], capture_output=True, text=True)
        print(f"intra_op_num_threads={threads or 'unset (default)'}: {out.stdout.strip() or out.stderr[-300:]} tokens/s", flush=True)
