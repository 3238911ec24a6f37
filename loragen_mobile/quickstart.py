"""`loragen quickstart`: the whole story on the built-in tiny presets, in one command.

task suites -> edge model trained with prompts -> generator -> LoRA for an unseen description ->
merged bundle -> ExecuTorch / ONNX / Core ML swap -> run without the system prompt, measured.

The full run trains the tiny-llama edge model (3,000 steps) and the generator (800 steps) from
scratch with ``configs/tiny.yaml``. ``--fast`` starts from the checkpoints shipped in
``loragen_mobile/assets`` (made with the full run's exact commands by ``scripts/make-assets.sh``)
and skips the two training stages. Every figure in the report is measured by this run; the
accuracy comes with the evaluation's controls and standard errors (``loragen eval``).
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

from . import models
from .bundle import (apply_bundle, build_bundle, bundle_swap, open_runner_with_bundle, verify_bundle,
    write_bundle)
from .bundle.keys import generate_keypair, load_private_key, load_public_key
from .data import group_by_task, make_records_file, read_jsonl
from .edge_training import EdgeTrainConfig, train_edge
from .errors import LoragenError
from .exporters import get_exporter
from .generator import generate_adapter, load_config, load_generator, train
from .generator.evaluate import LABELS, evaluate
from .lora import save_peft_adapter
from .training import lm_example

ASSETS = Path(__file__).parent / "assets"
SUITES = ("reasoning", "tools")
BACKENDS = ("executorch", "onnx", "coreml")
RUN_BACKENDS = ("executorch", "onnx")
#: what the report scores on the unseen tasks: LoRA-Gen, the baselines and the controls
#: (the per-task LoRA baseline is `loragen eval`'s: it trains one LoRA per task)
EVAL_METHODS = ("edge_prompt", "edge_no_prompt", "loragen", "loragen_other_task", "loragen_empty", "mean_adapter")


def _stage(bar, text):
    bar.set_postfix_str(text)
    bar.refresh()


def run_quickstart(out: str | os.PathLike, fast: bool = False, seed: int = 0, progress: bool = True) -> dict:
    from tqdm import tqdm

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise LoragenError(f"output directory {out} is not empty; choose a new one (nothing was written)")
    for sub in ("models", "data", "adapters", "artifacts", "bundles", "keys"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    stages = ["data", "edge model", "generator", "evaluate", "export", "bundles", "swap + run", "latency", "report"]
    bar = tqdm(total=len(stages), desc="quickstart", unit="stage", disable=not progress)
    report: dict = {"mode": "fast" if fast else "full", "seed": seed}
    t_start = time.perf_counter()

    _stage(bar, "data")
    data = {}
    for split in ("train", "unseen"):
        data[split] = out / "data" / f"{split}.jsonl"
        make_records_file("all", split, data[split], seed=seed)
    bar.update()

    _stage(bar, "edge model")
    if fast:
        edge_dir, run_dir = ASSETS / "tiny-llama-edge", ASSETS / "tiny-llama-generator"
        if not (edge_dir / "config.json").is_file() or not (run_dir / "generator.json").is_file():
            raise LoragenError(f"the shipped checkpoints are missing from {ASSETS}; run without --fast")
        report["checkpoints"] = "shipped (loragen_mobile/assets)"
    else:
        config = Path(__file__).parent.parent / "configs" / "tiny.yaml"
        if not config.is_file():
            raise LoragenError(f"{config} is missing: run the quickstart from a checkout (pip install -e .)")
        init = models.init_model_dir("tiny-llama", out / "models" / "tiny-llama-init", seed=seed)
        edge_dir = out / "models" / "tiny-llama-edge"
        train_edge(init, data["train"], edge_dir, EdgeTrainConfig.load(config), progress=progress)
        bar.update()
        _stage(bar, "generator")
        run_dir = out / "generator"
        train(load_config(config), edge_dir, data["train"], run_dir, progress=progress)
        report["checkpoints"] = "trained by this run"
    if fast:
        bar.update()
    bar.update()

    _stage(bar, "evaluate")
    g = load_generator(run_dir, edge_dir=edge_dir)
    ev = evaluate(g, data["unseen"], methods=EVAL_METHODS, train_data=data["train"], progress=False)
    report["generator_id"] = g.generator_id
    report["accuracy"] = {s: {m: ev["results"][s]["unseen"][m]["accuracy"] for m in EVAL_METHODS} for s in SUITES}
    report["stderr"] = {s: {m: ev["results"][s]["unseen"][m]["stderr"] for m in EVAL_METHODS} for s in SUITES}
    report["scored"] = {s: {"examples": ev["results"][s]["unseen"]["loragen"]["n"],
                            "tasks": ev["results"][s]["unseen"]["loragen"]["tasks"],
                            "left_out_in_training": ev["results"][s]["unseen"]["excluded_train_overlap"]}
                        for s in SUITES}
    report["input_tokens"] = {s: {"with_prompt": ev["results"][s]["unseen"]["edge_prompt"]["mean_input_tokens"],
                                  "without_prompt": ev["results"][s]["unseen"]["loragen"]["mean_input_tokens"]}
                              for s in SUITES}
    report["compression_ratio"] = {s: ev["results"][s]["unseen"]["compression_ratio"] for s in SUITES}
    bar.update()

    _stage(bar, "export")
    arts = {}
    for b in BACKENDS:
        arts[b] = out / "artifacts" / b
        get_exporter(b).export(edge_dir, arts[b], max_context=384, progress=False)
    report["artifact_bytes"] = {b: sum(f.stat().st_size for f in arts[b].rglob("*") if f.is_file()) for b in BACKENDS}
    bar.update()

    _stage(bar, "bundles")
    generate_keypair(out / "keys" / "server.pem", out / "keys" / "server.pub")
    key, pub = load_private_key(out / "keys" / "server.pem"), load_public_key(out / "keys" / "server.pub")
    unseen = read_jsonl(data["unseen"])
    examples = {s: next(iter(group_by_task([r for r in unseen if r["suite"] == s]).values())) for s in SUITES}
    bundles: dict = {}
    for s in SUITES:
        task = examples[s][0]["system"]
        adapter = generate_adapter(g, task)
        save_peft_adapter(adapter, out / "adapters" / f"{s}-unseen", base_model=str(edge_dir))
        for b in BACKENDS:
            for kind in ("merged", "lora"):
                raw = build_bundle(arts[b], adapter, kind, private_key=key, generator_id=g.generator_id, task=task)
                bundles[(s, b, kind)] = write_bundle(raw, out / "bundles" / f"{s}-{b}-{kind}.bundle")
    report["bundle_bytes"] = {k: bundles[("tools", "executorch", k)].stat().st_size for k in ("merged", "lora")}
    report["bundle_bytes_by_backend"] = {b: {k: bundles[("tools", b, k)].stat().st_size for k in ("merged", "lora")}
                                         for b in BACKENDS}
    bar.update()

    _stage(bar, "swap + run")
    tok = models.load_tokenizer(edge_dir)
    runs = {}
    for s in SUITES:
        rec = examples[s][-1]
        ids = lm_example(tok, None, rec["input"], None)[0]
        n_new = len(tok(rec["target"], add_special_tokens=False)["input_ids"]) + 1
        for b in RUN_BACKENDS:
            runner = open_runner_with_bundle(bundles[(s, b, "merged")], arts[b], pub)
            new = runner.generate(ids, n_new)
            text = tok.decode([t for t in new if t != tok.eos_token_id], skip_special_tokens=True)
            runs[f"{s}/{b}"] = {"input": rec["input"], "target": rec["target"], "output": text,
                                "correct": text == rec["target"]}
    report["runs_without_prompt"] = runs
    # Core ML cannot run on Linux: apply the bundle, then read every swapped weight back
    cm = get_exporter("coreml")
    vb = verify_bundle(bundles[("tools", "coreml", "merged")], arts["coreml"], pub)
    want = bundle_swap(vb, arts["coreml"])
    patched = apply_bundle(bundles[("tools", "coreml", "merged")], arts["coreml"], out / "artifacts" / "coreml-tools", pub)
    got = cm.read_weights(patched.path)
    diffs = []
    for slot in patched.slots:
        import numpy as np

        diffs.append(float(np.abs(got[slot["key"]].astype(np.float32) - want[slot["name"]].float().numpy()).max()))
    report["coreml_readback_max_abs_diff"] = max(diffs)
    report["coreml_readback_tensors"] = len(diffs)
    bar.update()

    _stage(bar, "latency")
    report["prefill_ms"], report["prefill_speedup"] = {}, {}
    report["swap_seconds"], report["cold_load_seconds"] = {}, {}
    for b in RUN_BACKENDS:
        exp = get_exporter(b)
        report["prefill_ms"][b], report["prefill_speedup"][b] = {}, {}
        base_runner = exp.open_runner(arts[b])
        for s in SUITES:
            rec = examples[s][-1]
            with_p = lm_example(tok, rec["system"], rec["input"], None)[0]
            without = lm_example(tok, None, rec["input"], None)[0]
            swapped = open_runner_with_bundle(bundles[(s, b, "merged")], arts[b], pub)
            t_with = _median_prefill(base_runner, with_p)
            t_without = _median_prefill(swapped, without)
            report["prefill_ms"][b][s] = {"with_prompt": 1e3 * t_with, "loragen_without_prompt": 1e3 * t_without,
                                          "tokens_with_prompt": len(with_p), "tokens_without_prompt": len(without)}
            report["prefill_speedup"][b][s] = t_with / t_without
        vb = verify_bundle(bundles[("tools", b, "merged")], arts[b], pub)
        report["swap_seconds"][b] = _median(lambda: exp.open_runner(arts[b], swap=bundle_swap(vb, arts[b])).prefill([1]))
        report["cold_load_seconds"][b] = _median(lambda: exp.open_runner(arts[b]).prefill([1]))
    bar.update()

    _stage(bar, "report")
    report["seconds"] = time.perf_counter() - t_start
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, out)
    bar.update()
    bar.close()
    return report


def _median(fn, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats + 1):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def _median_prefill(runner, ids, repeats: int = 7) -> float:
    def once():
        runner.reset()
        runner.prefill(ids)
    return _median(once, repeats)


def format_table(report: dict) -> str:
    methods = [m for m in EVAL_METHODS if m in report["accuracy"][SUITES[0]]]
    rows = [("suite",) + tuple(LABELS[m] for m in methods)
            + ("tokens w/ prompt", "tokens w/o", "compression", "ET prefill x", "ORT prefill x")]
    for s in SUITES:
        a, e, t = report["accuracy"][s], report["stderr"][s], report["input_tokens"][s]
        rows.append((s,) + tuple(f"{a[m]:.3f}±{e[m]:.3f}" for m in methods)
                    + (f"{t['with_prompt']:.1f}", f"{t['without_prompt']:.1f}", f"{report['compression_ratio'][s]:.1f}x",
                       f"{report['prefill_speedup']['executorch'][s]:.1f}x", f"{report['prefill_speedup']['onnx'][s]:.1f}x"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("accuracy on unseen task descriptions ± standard error over tasks; scored: " + ", ".join(
        f"{s} {report['scored'][s]['examples']} examples of {report['scored'][s]['tasks']} tasks"
        for s in SUITES))
    b = report["bundle_bytes"]
    lines.append("")
    lines.append(f"bundle: merged {b['merged'] / 1e3:.0f} kB, lora {b['lora'] / 1e3:.0f} kB; artifacts: "
                 + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in report["artifact_bytes"].items()))
    lines.append("swap + load vs cold load: " + ", ".join(
        f"{k} {report['swap_seconds'][k] * 1e3:.0f} ms vs {report['cold_load_seconds'][k] * 1e3:.0f} ms"
        for k in RUN_BACKENDS))
    lines.append(f"Core ML: {report['coreml_readback_tensors']} swapped weights read back, max |diff| "
                 f"{report['coreml_readback_max_abs_diff']:.1e} (fp16)")
    return "\n".join(lines)


def write_markdown(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    methods = [m for m in EVAL_METHODS if m in report["accuracy"][SUITES[0]]]
    w = 0.8 / len(methods)
    for k, m in enumerate(methods):
        ax.bar([i + (k - (len(methods) - 1) / 2) * w for i in range(len(SUITES))],
               [report["accuracy"][s][m] for s in SUITES], w, yerr=[report["stderr"][s][m] for s in SUITES],
               label=LABELS[m], capsize=2)
    ax.set(xticks=range(len(SUITES)), xticklabels=SUITES, ylabel="exact match (unseen tasks)", ylim=(0, 1),
           title="Accuracy on unseen task descriptions")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for k, (key, label) in enumerate((("with_prompt", "with prompt"), ("without_prompt", "without (LoRA-Gen)"))):
        axes[0].bar([i + (k - 0.5) * 0.4 for i in range(len(SUITES))],
                    [report["input_tokens"][s][key] for s in SUITES], 0.4, label=label)
    axes[0].set(xticks=range(len(SUITES)), xticklabels=SUITES, ylabel="input tokens", title="Context length")
    axes[0].legend(fontsize=8)
    for k, b in enumerate(RUN_BACKENDS):
        for j, (key, label) in enumerate((("with_prompt", "prompt"), ("loragen_without_prompt", "LoRA-Gen"))):
            axes[1].bar([i + (2 * k + j - 1.5) * 0.2 for i in range(len(SUITES))],
                        [report["prefill_ms"][b][s][key] for s in SUITES], 0.2, label=f"{b}: {label}")
    axes[1].set(xticks=range(len(SUITES)), xticklabels=SUITES, ylabel="prefill ms (median)", title="Time to first token")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    names = ["artifact (ET)", "merged bundle", "lora bundle"]
    vals = [report["artifact_bytes"]["executorch"] / 1e6, report["bundle_bytes"]["merged"] / 1e6,
            report["bundle_bytes"]["lora"] / 1e6]
    axes[0].bar(names, vals, color=["gray", "C0", "C1"])
    axes[0].set(ylabel="MB", title="What a phone downloads")
    x = range(len(RUN_BACKENDS))
    axes[1].bar([i - 0.2 for i in x], [report["swap_seconds"][b] * 1e3 for b in RUN_BACKENDS], 0.4, label="swap + load")
    axes[1].bar([i + 0.2 for i in x], [report["cold_load_seconds"][b] * 1e3 for b in RUN_BACKENDS], 0.4, label="cold load")
    axes[1].set(xticks=list(x), xticklabels=RUN_BACKENDS, ylabel="ms (median)", title="Swap vs cold load")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "bundles.png", dpi=110)
    plt.close(fig)

    md = [f"# loragen quickstart report ({report['mode']} run, {report['seconds']:.0f} s)", "",
          f"Checkpoints: {report['checkpoints']}. Generator `{report['generator_id']}`. Every figure below was "
          "measured by this run (`report.json` holds the same numbers).", "", "```", format_table(report), "```", "",
          "![accuracy](accuracy.png)", "", "![latency](latency.png)", "", "![bundles](bundles.png)", "",
          "## Runs without the system prompt (bundle swapped in)", "", "| suite/backend | input | target | output |",
          "|---|---|---|---|"]
    for k, r in report["runs_without_prompt"].items():
        md.append(f"| {k} | `{r['input']}` | `{r['target']}` | `{r['output']}` |")
    (out / "report.md").write_text("\n".join(md) + "\n")
