"""Our artifacts side by side with what a developer would otherwise export, same model, same runtime.

  ONNX        onnxruntime-genai's model builder (`python -m onnxruntime_genai.models.builder`), fp32,
              fp16 and int4, against `loragen export --backend onnx` (fp32, --dtype fp16, --quantize
              int4-b32); both run through onnxruntime-genai's own flow (og.Model, og.Generator).
  ExecuTorch  optimum-executorch (`optimum-cli export executorch --recipe xnnpack`), fp32, fp16 and
              8da4w group 32, against `loragen export --backend executorch` (fp32, --dtype fp16,
              --quantize 8da4w-g32);
              both run through ExecuTorch's LLM runner (TextLLMRunner of the pinned wheel).
              optimum-executorch pins transformers 5.0.0rc1, so it runs from a tool environment of
              its own that this benchmark creates (--tool-env); it never enters the project's.

Each export runs in a child process (wall time, peak RSS); each artifact then runs in a fresh
process (cold load + first token, prefill, decode tokens/s; see stock_run.py). The greedy tokens
of every pair are compared: at fp32 both must give the same tokens, or the speed comparison is
between different models (at fp16 and below, the two graphs round differently). Ratios (ours /
peer) are the result. Random weights: speed and memory do not depend on them.

  loragen bench peers --backends onnx --out bench-out/peers.json
  loragen bench peers --preset tinyllama-1.1b --max-context 512 --work-dir bench-out/peers-1.1b --out bench-out/peers-1.1b.json   # long
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from . import in_work_dir

#: optimum-executorch's tool environment: the tool and the runtime pins it must export for
OPTIMUM_EXECUTORCH = ("torch==2.13.0", "executorch==1.5.1", "optimum-executorch==1.1.0")

#: (backend, precision) -> our `loragen export` quantize scheme, the peer's name and its export options
#: (precision "fp16": both store fp16 weights; ours is `--dtype fp16`).
#: The builder's CPU int4 default (block 32) computes with int8 activations (MatMulNBits
#: accuracy_level 4), as our 8da4w-b32 does; for int4-b32 (fp32 activations) it is asked for
#: accuracy_level 1.
PAIRS = {
    ("onnx", "fp32"): (None, "og-builder", ["-p", "fp32"]),
    ("onnx", "fp16"): (None, "og-builder", ["-p", "fp16"]),
    ("onnx", "int4-b32"): ("int4-b32", "og-builder", ["-p", "int4", "--extra_options", "accuracy_level=1",
                                                      "block_size=32"]),
    ("onnx", "8da4w-b32"): ("8da4w-b32", "og-builder", ["-p", "int4"]),
    ("executorch", "fp32"): (None, "optimum-executorch", []),
    ("executorch", "fp16"): (None, "optimum-executorch", ["--dtype", "float16"]),
    ("executorch", "8da4w-g32"): ("8da4w-g32", "optimum-executorch", ["--qlinear", "8da4w", "--qlinear_group_size", "32"]),
}


def add_arguments(p):
    p.add_argument("--preset", default="tiny-llama", help="edge preset (random weights), e.g. tinyllama-1.1b")
    p.add_argument("--backends", default="onnx,executorch")
    p.add_argument("--precisions", help="comma-separated precisions to run (default: all of "
                                        + ", ".join(sorted({pr for _, pr in PAIRS})) + ")")
    p.add_argument("--prompt-tokens", type=int, default=128)
    p.add_argument("--decode-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-context", type=int, default=256)
    p.add_argument("--work-dir", help="keep the model and the exported artifacts here and reuse them on the next run "
                                      "(default: a temporary directory, removed at the end)")
    p.add_argument("--tool-env", help="optimum-executorch's tool environment (created when missing; default: "
                                      "~/.cache/loragen-mobile/tools/optimum-executorch)")
    p.add_argument("--out", default="bench-out/peers.json")


def tool_env(path: Path) -> Path:
    """The Python of a virtual environment holding OPTIMUM_EXECUTORCH, created on first use."""
    from ..errors import LoragenError

    py = path / "bin" / "python"
    stamp = path / "loragen-tool-env.json"
    if py.exists() and stamp.exists() and json.loads(stamp.read_text()) == list(OPTIMUM_EXECUTORCH):
        return py
    if path.exists() and any(path.iterdir()) and not (path / "pyvenv.cfg").exists():
        raise LoragenError(f"--tool-env {path} is neither empty nor a virtual environment; give a new directory "
                           f"(it would be cleared)", code="usage")
    print(f"creating the optimum-executorch tool environment in {path} (once; about 2 GB)", flush=True)
    for cmd in ([sys.executable, "-m", "venv", "--clear", str(path)],
                [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", *OPTIMUM_EXECUTORCH]):
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            tail = (r.stderr.strip().splitlines() or ["?"])[-1]
            raise LoragenError(f"could not create the tool environment {path}: {tail}", code="install")
    stamp.write_text(json.dumps(list(OPTIMUM_EXECUTORCH)))
    return py


def _peer_export(tool: str, model_dir: Path, out: Path, opts: list[str], max_context: int, env: Path | None) -> dict:
    from . import run_child

    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        if tool == "og-builder":
            r = run_child(["-i", str(model_dir), "-o", str(tmp), "-e", "cpu", "-c", str(tmp / ".cache"), *opts],
                          "onnxruntime-genai model builder", module="onnxruntime_genai.models.builder")
            shutil.rmtree(tmp / ".cache", ignore_errors=True)
        else:
            r = run_child(["export", "executorch", "--model", str(model_dir), "--task", "text-generation", "--recipe",
                           "xnnpack", "--max_seq_len", str(max_context), "--output_dir", str(tmp), *opts],
                          "optimum-executorch export", module="optimum.commands.optimum_cli", python=str(tool_env(env)))
            shutil.copy(model_dir / "tokenizer.json", tmp / "tokenizer.json")  # the runner's tokenizer
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed export leaves nothing in the work directory
        raise
    tmp.rename(out)
    return {"export_s": r["s"], "export_peak_rss_bytes": r["peak_rss_bytes"]}


def _prompt(model_dir: Path, n: int) -> dict:
    """A text whose tokens (BOS first) number n, or as close below as whole words allow."""
    from ..models import load_tokenizer

    tok = load_tokenizer(model_dir)
    words = "the model reads a short task description and answers with one line".split()
    text, k = "", 0
    while True:
        nxt = (text + " " + words[k % len(words)]).strip()
        if len(tok(nxt).input_ids) > n:
            break
        text, k = nxt, k + 1
    return {"text": text, "ids": tok(text).input_ids}


def _run(runtime: str, art: Path, prompt_file: Path, new: int, repeats: int, work: Path) -> dict:
    from . import run_child

    out = work / f".{art.name}.run.json"
    r = run_child([runtime, str(art), str(prompt_file), str(new), str(repeats), str(out)],
                  f"{runtime} run of {art.name}", module="loragen_mobile.bench.stock_run")
    res = json.loads(out.read_text())
    out.unlink()
    return {**res, "run_peak_rss_bytes": r["peak_rss_bytes"]}


@in_work_dir("work_dir")
def run(args, work: Path) -> dict:
    from tqdm import tqdm

    from ..errors import LoragenError
    from . import cached_artifact, machine_info, preset_model_dir, shared_export, write_json

    if min(args.prompt_tokens, args.decode_tokens, args.repeats) < 1:
        raise LoragenError("--prompt-tokens, --decode-tokens and --repeats must be positive", code="usage")
    if args.prompt_tokens + args.decode_tokens + 1 > args.max_context:
        raise LoragenError("--prompt-tokens + --decode-tokens exceed --max-context", code="usage")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    precisions = [p.strip() for p in args.precisions.split(",")] if args.precisions else None
    unknown = sorted(set(precisions or ()) - {pr for _, pr in PAIRS})
    if unknown:
        raise LoragenError(f"unknown --precisions {', '.join(unknown)}; known: "
                           f"{', '.join(sorted({pr for _, pr in PAIRS}))}", code="usage")
    pairs = {k: v for k, v in PAIRS.items() if k[0] in backends and (precisions is None or k[1] in precisions)}
    if not pairs:
        raise LoragenError(f"no benchmark pairs for --backends {args.backends} --precisions {args.precisions}; "
                           f"pairs: {', '.join('/'.join(k) for k in PAIRS)}", code="usage")
    env = Path(args.tool_env) if args.tool_env else Path.home() / ".cache" / "loragen-mobile" / "tools" / "optimum-executorch"
    model_dir = preset_model_dir(work, args.preset, args.max_context)
    prompt = _prompt(model_dir, args.prompt_tokens)
    prompt_file = work / ".prompt.json"
    prompt_file.write_text(json.dumps(prompt))
    result = {"bench": "peers", "preset": args.preset, "prompt_tokens": len(prompt["ids"]), "prompt_ids": prompt["ids"],
              "decode_tokens": args.decode_tokens, "repeats": args.repeats, "max_context": args.max_context,
              "machine": machine_info(), "results": {}}
    for (backend, precision), (scheme, tool, opts) in tqdm(pairs.items(), desc="peers bench", unit="pair"):
        runtime = "og" if backend == "onnx" else "executorch"
        tag = "-".join(o.split("=")[-1] for o in opts if not o.startswith("-")) or "fp32"
        try:  # a pair that fails (ours out of memory, say) is recorded and the others still run
            ours, ours_e = shared_export(work, args.preset, backend, scheme, args.max_context,
                                         dtype="fp16" if precision == "fp16" else "fp32")
            row = {"ours": {**ours_e, **_run(runtime, ours, prompt_file, args.decode_tokens, args.repeats, work)}}
        except LoragenError as e:
            result["results"][f"{backend}/{precision}"] = {"error": str(e)}
            write_json(result, args.out)
            continue
        row["peer"] = {"tool": tool, "options": opts}
        try:  # a peer that fails to export or run is recorded beside our figures
            peer = work / f"{args.preset}-{tool}-{tag}"
            peer_e = cached_artifact(peer, lambda d: _peer_export(tool, model_dir, d, opts, args.max_context, env))
            row["peer"].update({**peer_e, **_run(runtime, peer, prompt_file, args.decode_tokens, args.repeats, work)})
        except LoragenError as e:
            row["peer"]["error"] = str(e)
        row["same_tokens"] = row["ours"]["tokens"] == row["peer"]["tokens"] if "tokens" in row["peer"] else None
        row["ratios"] = {k: row["ours"][k] / row["peer"][k]
                         for k in ("decode_tokens_per_s", "prefill_ms", "cold_first_token_s", "artifact_bytes",
                                   "export_s", "export_peak_rss_bytes")
                         if row["ours"].get(k) and row["peer"].get(k)}
        result["results"][f"{backend}/{precision}"] = row
        write_json(result, args.out)
    prompt_file.unlink()
    out = write_json(result, args.out)
    _plot(result, out.with_suffix(".png"))
    for key, row in result["results"].items():
        if "error" in row:
            print(f"{args.preset} {key:34s} failed: {row['error']}")
            continue
        o, p = row["ours"], row["peer"]
        if "error" in p:
            print(f"{args.preset} {key:34s} decode {o['decode_tokens_per_s']:7.2f} tok/s; the peer failed: {p['error']}")
            continue
        print(f"{args.preset} {key:34s} decode {o['decode_tokens_per_s']:7.2f} vs {p['decode_tokens_per_s']:7.2f} tok/s  "
              f"prefill {o['prefill_ms']:8.1f} vs {p['prefill_ms']:8.1f} ms  "
              f"bytes {o['artifact_bytes'] / 1e6:8.1f} vs {p['artifact_bytes'] / 1e6:8.1f} MB  "
              f"same tokens: {row['same_tokens']}")
    print(f"wrote {out}")
    return result


def _plot(result, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k, row in result["results"].items() if "error" not in row]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, (k, label) in zip(axes, (("decode_tokens_per_s", "decode tokens/s"), ("prefill_ms", "prefill ms"),
                                     ("artifact_bytes", "artifact bytes"))):
        for j, who in enumerate(("ours", "peer")):
            ax.bar([i + 0.4 * j for i in range(len(keys))],
                   [result["results"][x][who].get(k) or 0 for x in keys], 0.4, label=who)
        ax.set_xticks([i + 0.2 for i in range(len(keys))], keys, fontsize=7, rotation=20)
        ax.set_title(label)
    axes[0].legend()
    fig.suptitle(f"{result['preset']}: ours vs the peer exporter, same runtime")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
