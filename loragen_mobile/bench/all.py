"""Run every benchmark and write one markdown report of the latest figures.

Each benchmark runs with its own defaults (the same as `loragen bench NAME`), writes its JSON and
PNG under --out-dir, and gets a section in the report with the exact command and the machine.

With --preset, every benchmark runs on that one preset's shapes (random weights) and shares one
work directory: the model directory and each artifact (backend, quantization scheme, adapter slots,
one KV-cache length for all) are exported once, by whichever benchmark needs it first, and reused
by the others with their export figures. The peers compare fp32 and fp16 on both backends and the
ONNX int4 pair (--precisions); `loragen bench peers --precisions 8da4w-g32` adds the ExecuTorch 8da4w pair
(about 25 minutes of exports at the TinyLlama-1.1B shape).

  loragen bench all --report docs/results.md
  loragen bench all --only speedup,bundle --report bench-out/results.md
  loragen bench all --preset tinyllama-1.1b --work-dir W --out-dir bench-out/1.1b --report bench-out/1.1b/results.md   # long
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

from . import BENCHES

ORDER = ("merge", "runtime", "bundle", "quant", "speedup", "peers", "serve", "cli")
#: with --preset: the peers first (their exports are the ones the others reuse), the runtime last
PRESET_ORDER = ("merge", "peers", "speedup", "bundle", "quant", "runtime", "serve", "cli")


def add_arguments(p):
    p.add_argument("--out-dir", default="bench-out", help="where each benchmark writes NAME.json and NAME.png")
    p.add_argument("--report", default="bench-out/results.md", help="markdown report to write")
    p.add_argument("--only", help=f"comma-separated subset of {','.join(ORDER)}")
    g = p.add_argument_group("one preset, one shared work directory")
    g.add_argument("--preset", help="run every benchmark on this preset's shapes, e.g. tinyllama-1.1b (needs --work-dir)")
    g.add_argument("--work-dir", help="the model and artifacts, exported once and shared by the benchmarks")
    g.add_argument("--backends", default="executorch,onnx", help="backends to export and run (default executorch,onnx)")
    g.add_argument("--precisions", default="fp32,fp16,8da4w-b32",
                   help="the peers' precisions, and the quantization schemes of the quant benchmark (default "
                        "fp32,fp16,8da4w-b32: fp32 and fp16 on both backends and the ONNX int4 pair)")
    g.add_argument("--prompt-tokens", default="100,500,1000",
                   help="speedup's system prompt lengths; the longest sets the KV-cache length of every artifact")
    g.add_argument("--repeats", type=int, default=3, help="repeats of every timing (default 3)")


def _available() -> dict[str, str]:
    return {k: v for k, v in BENCHES.items() if k in ORDER}


def _defaults(name: str) -> argparse.Namespace:
    """Benchmark NAME's option defaults."""
    p = argparse.ArgumentParser()
    importlib.import_module(f"loragen_mobile.bench.{BENCHES[name]}").add_arguments(p)
    return p.parse_args([])


def preset_argv(args, name: str) -> list[str]:
    """The arguments of benchmark NAME in a --preset run (before --out)."""
    p, w, b, rep = args.preset, args.work_dir, args.backends, str(args.repeats)
    # one KV-cache length for all: speedup's longest prompt + input + answer, and the peers' prompt +
    # answer (each with its defaults)
    sp, pe = _defaults("speedup"), _defaults("peers")
    longest = max(int(x) for x in args.prompt_tokens.split(",") if x.strip())
    ctx = str(max(longest + sp.input_tokens + sp.answer_tokens + 8, pe.prompt_tokens + pe.decode_tokens + 1))
    # the quant benchmark's schemes: fp32 is its "none"; fp16 is not a quantization scheme (the peers cover it)
    schemes = ",".join("none" if x.strip() == "fp32" else x.strip() for x in args.precisions.split(",")
                       if x.strip() != "fp16") or "none"
    if name == "runtime":  # every shared artifact of the preset the others exported, but the conventional graphs
        arts = sorted(d for d in Path(w).glob(f"{p}-*") if d.is_dir() and not d.name.endswith("-unmerged")
                      and d.name.split("-")[len(p.split("-"))] in b.split(","))
        return ["--model", str(Path(w) / f"model-{p}"), *[x for d in arts for x in ("--artifact", str(d))],
                "--max-context", ctx, "--repeats", rep]
    return {"merge": ["--preset", p, "--repeats", rep],
            "peers": ["--preset", p, "--work-dir", w, "--backends", b, "--precisions", args.precisions,
                      "--max-context", ctx, "--repeats", rep],
            "speedup": ["--preset", p, "--work-dir", w, "--backends", b, "--prompt-tokens", args.prompt_tokens,
                        "--input-tokens", str(sp.input_tokens), "--answer-tokens", str(sp.answer_tokens), "--max-context", ctx,
                        "--repeats", rep],
            "bundle": ["--presets", p, "--artifacts-dir", w, "--backends", b, "--max-context", ctx, "--repeats", rep],
            "quant": ["--presets", p, "--artifacts-dir", w, "--backends", b, "--schemes", schemes,
                      "--max-context", ctx]}.get(name, [])


def run(args) -> dict:
    from ..errors import LoragenError
    from . import machine_info, write_json

    avail = _available()
    order = PRESET_ORDER if args.preset else ORDER
    names = [n.strip() for n in args.only.split(",")] if args.only else [n for n in order if n in avail]
    bad = [n for n in names if n not in avail]
    if bad:
        raise LoragenError(f"unknown benchmark(s) {bad}; available: {', '.join(avail)}", code="usage")
    if bool(args.preset) != bool(args.work_dir):
        raise LoragenError("--preset and --work-dir go together (the preset's model and artifacts are kept in the "
                           "work directory)", code="usage")
    if args.preset:
        from ..models import PRESETS

        if args.preset not in PRESETS:
            raise LoragenError(f"unknown --preset {args.preset}; known: {', '.join(PRESETS)}", code="usage")
        lengths = [x.strip() for x in args.prompt_tokens.split(",") if x.strip()]
        if not lengths or not all(x.isdigit() and int(x) > 0 for x in lengths) or args.repeats < 1:
            raise LoragenError(f"--prompt-tokens takes positive token counts (e.g. 100,500,1000), got "
                               f"{args.prompt_tokens!r}; --repeats must be at least 1", code="usage")
        Path(args.work_dir).mkdir(parents=True, exist_ok=True)
        names = sorted(names, key=order.index)
    out_dir = Path(args.out_dir)
    results, commands, walls, peaks = {}, {}, {}, {}
    t_all = time.perf_counter()
    for name in names:
        mod = importlib.import_module(f"loragen_mobile.bench.{avail[name]}")
        p = argparse.ArgumentParser()
        mod.add_arguments(p)
        argv = (preset_argv(args, name) if args.preset else []) + ["--out", str(out_dir / f"{name}.json")]
        commands[name] = " ".join(["loragen", "bench", name, *argv])
        t0 = time.perf_counter()
        reset = _reset_peak_rss()
        results[name] = mod.run(p.parse_args(argv))
        walls[name] = time.perf_counter() - t0
        if reset:
            peaks[name] = _peak_rss_bytes()
        print(f"bench {name}: {walls[name] / 60:.1f} min", flush=True)
    total = time.perf_counter() - t_all
    summary = {"bench": "all", "preset": args.preset, "work_dir": args.work_dir, "commands": commands,
               "wall_s": walls, "total_wall_s": total, "machine": machine_info(),
               # this process's own peak RSS during each benchmark (exports and runs in child
               # processes are measured by the benchmarks themselves)
               "peak_rss_bytes": peaks}
    write_json(summary, out_dir / "all.json")
    write_report(results, Path(args.report), commands, walls, total, machine_info(), peaks)
    print(f"all benchmarks: {total / 60:.1f} min; wrote {args.report} and {out_dir / 'all.json'}")
    return results


def _reset_peak_rss() -> bool:
    """Start this process's peak RSS (VmHWM) afresh (Linux: ``/proc/self/clear_refs``); False where
    that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        return int(next(line.split()[1] for line in f if line.startswith("VmHWM:"))) * 1024


def write_report(results: dict, report: Path, commands: dict, walls: dict, total: float, machine: dict,
                 peaks: dict | None = None) -> None:
    from ..fsutil import atomic_file

    lines = ["# Results", "", f"Regenerated by `loragen bench all --report {report}`."] + \
        report_lines(results, commands, walls, total, machine, "##", peaks)
    report.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(report, overwrite=True) as tmp:
        tmp.write_text("\n".join(lines))


def report_lines(results: dict, commands: dict, walls: dict, total: float, machine: dict, level: str,
                 peaks: dict | None = None) -> list[str]:
    """The report's body: the machine and the total time, then one section (heading ``level``) per
    benchmark with its command, its wall time (and the benchmark process's own peak RSS, where
    measured) and its tables."""
    lines = [f"All benchmarks: {total / 60:.1f} min. Machine: {machine['platform']}, {machine['cpu_count']} CPU "
             f"cores, torch {machine['torch']} ({machine['torch_threads']} threads), Python {machine['python']}. "
             "Absolute times hold for this machine only; ratios are what carries over.", ""]
    for name, res in results.items():
        png = Path(commands[name].rsplit("--out ", 1)[1]).with_suffix(".png")
        peak = f"; peak RSS of the benchmark process {peaks[name] / 2**30:.1f} GiB" if name in (peaks or {}) else ""
        lines += [f"{level} {name}", "", f"`{commands[name]}` ({walls[name] / 60:.1f} min{peak}; plot: `{png}`)", ""]
        lines += RENDER.get(name, _render_json)(res) + [""]
    return lines


def render_run(out_dir: Path, level: str = "###") -> str:
    """The report body of a finished run, rendered again from its JSON files in ``out_dir``."""
    import json

    summary = json.loads((out_dir / "all.json").read_text())
    results = {n: json.loads((out_dir / Path(c.rsplit("--out ", 1)[1]).name).read_text())
               for n, c in summary["commands"].items()}
    return "\n".join(report_lines(results, summary["commands"], summary["wall_s"], summary["total_wall_s"],
                                   summary["machine"], level, summary.get("peak_rss_bytes"))).rstrip() + "\n"


def _table(head: list[str], rows: list[list]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + \
        ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def _render_merge(r):
    def vs(x):
        return f"{x:.2f}x faster" if x >= 1 else f"{1 / x:.2f}x slower"

    return _table(["dtype", "loragen", "copy", "PEFT merge_and_unload", "vs PEFT", "vs copy"], [
        [d, f"{e['loragen']['median_s']:.2f} s", f"{e['copy']['median_s']:.2f} s",
         f"{e['peft_merge_and_unload']['median_s']:.2f} s", vs(e['loragen_vs_peft_speedup']),
         f"{e['loragen_vs_copy_ratio']:.2f}x the copy time"] for d, e in r["dtypes"].items()])


def _render_runtime(r):
    return _table(["model", "runtime", "artifact", f"prefill {r['prompt_tokens']} tokens", "decode tokens/s"], [
        [m, x["runtime"], x.get("artifact", "-"), f"{x['prefill_ms']:.2f} ms", f"{x['decode_tokens_per_s']:.1f}"]
        for m, rows in r["results"].items() for x in rows])


def _render_bundle(r):
    def ms(e, k):
        return f"{e[k]['median_s'] * 1e3:.1f} ms" if k in e else "-"

    sizes = _table(["preset / backend", "artifact", "merged bundle", "lora bundle", "verify (in process)",
                    "cold load + first token", "load with swap + first token", "swap in place + first token (merged / lora)",
                    "decode tokens/s before / after swap (merged / lora)"], [
        [f"{p} / {b}", f"{e['artifact_bytes'] / 1e6:.2f} MB", f"{e['merged']['bytes'] / 1e6:.3f} MB",
         f"{e['lora']['bytes'] / 1e6:.3f} MB", ms(e["merged"], "verify"), ms(e, "cold_load"),
         ms(e["merged"], "swap_load"),
         f"{ms(e['merged'], 'swap_in_place')} / {ms(e['lora'], 'swap_in_place')}",
         " / ".join(f"{x['decode_tokens_per_s']:.1f}" for x in (e, e["merged"], e["lora"]) if "decode_tokens_per_s" in x)]
        for p, per in r["results"].items() for b, e in per.items()])
    steps = ("build_merged", "verify_merged", "apply_merged", "build_lora", "apply_lora")
    cli = _table(["preset / backend"] + [f"`bundle {s.replace('_', ' ')}`" for s in steps], [
        [f"{p} / {b}"] + [f"{e['steps'][s]['s']:.1f} s, {e['steps'][s]['peak_rss_bytes'] / 2**30:.2f} GiB" for s in steps]
        for p, per in r["results"].items() for b, e in per.items() if "steps" in e])
    return sizes + ["", "The CLI steps, each in its own process: wall time (Python start included) and peak RSS", ""] + cli


def _render_speedup(r):
    return [f"{r['preset']}, rank-{r['rank']} unmerged LoRA vs merged; user input {r['input_tokens']} tokens, "
            f"answer {r['answer_tokens']} tokens; medians of {r['repeats']} (min-max in the JSON)", ""] + _table(
        ["backend", "prompt tokens", "prompt + LoRA prefill", "LoRA-Gen prefill", "prefill speedup",
         "end-to-end speedup", "compression"],
        [[b, x["prompt_tokens"], f"{x['conventional']['prefill_ms']:.2f} ms", f"{x['loragen']['prefill_ms']:.2f} ms",
          f"{x['prefill_speedup']:.1f}x", f"{x['e2e_speedup']:.2f}x", f"{x['compression_ratio']:.1f}x"]
         for b, rows in r["backends"].items() for x in rows])


def _render_serve(r):
    srv = r["server"]
    return [f"{r['kind']} bundles for `{r['artifact']}`, {r['requests_per_scenario']} requests per scenario and "
            f"concurrency from a second process; {srv['generations']:.0f} generator forwards built "
            f"{srv['bundles_built']:.0f} bundles (mean batch {srv['mean_batch']:.1f}); {r['errors']} errors", ""] + _table(
        ["concurrency", "scenario", "p50", "p99", "requests/s"],
        [[c, name, f"{s['p50_ms']:.1f} ms", f"{s['p99_ms']:.1f} ms", f"{s['rps']:.0f}"]
         for c, lv in r["levels"].items() for name, s in lv.items()])


def _render_cli(r):
    return [f"medians of {r['repeats']} runs after a warm-up; stderr and the heavy modules imported", ""] + _table(
        ["command", "wall time", "stderr", "heavy imports"],
        [[f"`{k}`", f"{c['median_s'] * 1e3:.0f} ms", f"{c['stderr_bytes']} bytes",
          ", ".join(c["heavy_imports"] or []) or "none"] for k, c in r["commands"].items()])


def _render_quant(r):
    rows = []
    for preset, per in r["results"].items():
        for backend, schemes in per.items():
            for scheme, e in schemes.items():
                q = e.get("quantized_weights")
                rows.append([preset, backend, scheme, f"{e['artifact_bytes'] / 1e6:.1f} MB",
                             f"{q['ratio']:.3f}x" if q else "-",
                             f"{e['export_s']:.0f} s" if "export_s" in e else "-",
                             f"{e['export_peak_rss_bytes'] / 2**30:.2f} GiB" if "export_peak_rss_bytes" in e else "-",
                             f"{e['merged_bundle_bytes'] / 1e6:.2f} MB", f"{e['lora_bundle_bytes'] / 1e6:.2f} MB"])
    return _table(["preset", "backend", "scheme", "artifact", "quantized weights / fp32", "export", "export peak RSS",
                   "merged bundle", "lora bundle"], rows)


def _render_peers(r):
    def f(e, k, fmt, scale=1.0):
        return fmt.format(e[k] * scale) if e.get(k) is not None else "-"

    rows = []
    for key, row in r["results"].items():
        if "error" in row:
            rows.append([key, "failed: " + row["error"].replace("|", "/")] + [""] * 7)
            continue
        o, p, x = row["ours"], row["peer"], row["ratios"]
        # a peer that failed: its tool and the start of its error (the whole line is in the JSON)
        err = p.get("error", "").replace("|", "/")
        rows.append([key, p["tool"] + (f" (failed: {err[:140]}{'...' if len(err) > 140 else ''})" if err else ""),
                     f"{f(o, 'decode_tokens_per_s', '{:.2f}')} / {f(p, 'decode_tokens_per_s', '{:.2f}')} "
                     f"({f(x, 'decode_tokens_per_s', '{:.2f}x')})",
                     f"{f(o, 'prefill_ms', '{:.0f}')} / {f(p, 'prefill_ms', '{:.0f}')} ms",
                     f"{f(o, 'load_s', '{:.2f}')} / {f(p, 'load_s', '{:.2f}')} s",
                     f"{f(o, 'artifact_bytes', '{:.0f}', 1e-6)} / {f(p, 'artifact_bytes', '{:.0f}', 1e-6)} MB",
                     f"{f(o, 'export_s', '{:.0f}')} / {f(p, 'export_s', '{:.0f}')} s",
                     f"{f(o, 'export_peak_rss_bytes', '{:.1f}', 2**-30)} / "
                     f"{f(p, 'export_peak_rss_bytes', '{:.1f}', 2**-30)} GiB",
                     {True: "yes", False: "no"}.get(row["same_tokens"], "-")])
    return [f"{r['preset']}: ours / the peer's, each run by the same stock runtime (onnxruntime-genai; "
            f"ExecuTorch's TextLLMRunner) in a fresh process; prompt {r['prompt_tokens']} tokens, "
            f"{r['decode_tokens']} new tokens, medians of {r['repeats']}", ""] + _table(
        ["backend / precision", "peer", "decode tokens/s (ours/peer)", "prefill", "load", "artifact",
         "export", "export peak RSS", "same greedy tokens"], rows)


def _render_json(r):
    import json

    return ["```json", json.dumps(r, indent=2)[:4000], "```"]


RENDER = {"merge": _render_merge, "runtime": _render_runtime, "bundle": _render_bundle, "quant": _render_quant,
          "speedup": _render_speedup, "peers": _render_peers, "serve": _render_serve, "cli": _render_cli}
