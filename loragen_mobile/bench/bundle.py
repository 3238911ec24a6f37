"""Bundle sizes, times and memory: bytes of each kind vs the artifact, build, verify, apply, swap vs cold load.

For each preset: export (or reuse with --artifacts-dir) ExecuTorch and ONNX artifacts, build a
signed bundle of each kind for a rank-16 FFN LoRA, and time build, verify, the swap at load
(open a runner with the bundle), the swap in a loaded runner (the artifact is exported with run-time
adapter slots of the bundle's rank, and a lora bundle goes to ``set_adapter``; ONNX: a merged bundle
keeps the session and feeds the weight slots as inputs) and a cold load of the base artifact, each with its first
token; and the decode rate before and after the swap. The CLI steps a developer or
the service runs (`loragen bundle build` of each kind, `verify`, `apply` of each kind) also run as
child processes, each with its wall time and peak RSS read from the kernel. The published shapes
(tinyllama-1.1b, llama-3.2-1b, gemma-2b, ...; random weights) take a long time to export on a
laptop: they run only when named with --presets, and skip the in-process build / verify timings
(their child steps stand for them). Writes JSON and a PNG bar chart.
"""

from __future__ import annotations

from pathlib import Path

from . import in_work_dir


def add_arguments(p):
    p.add_argument("--presets", default="tiny-llama,tiny-gemma",
                   help="comma-separated presets (any of `loragen init-model --help`, e.g. tiny-llama, tiny-qwen3)")
    p.add_argument("--backends", default="executorch,onnx")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--max-context", type=int, default=128)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--artifacts-dir", help="keep exported artifacts here and reuse them on the next run "
                                           "(default: a temporary directory, removed at the end)")
    p.add_argument("--out", default="bench-out/bundle.json")


@in_work_dir("artifacts_dir")
def run(args, work: Path) -> dict:
    from tqdm import tqdm

    from ..bundle import build_bundle, bundle_adapter, bundle_swap, verify_bundle
    from ..bundle.keys import generate_keypair, load_private_key, load_public_key
    from ..exporters import get_exporter
    from . import large_preset, machine_info, preset_adapter, shared_export, time_call, write_json

    if not (work / "keys" / "bench.pem").exists():
        generate_keypair(work / "keys" / "bench.pem", work / "keys" / "bench.pub")
    key, pub = load_private_key(work / "keys" / "bench.pem"), load_public_key(work / "keys" / "bench.pub")
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    result = {"bench": "bundle", "rank": args.rank, "machine": machine_info(), "results": {}}
    jobs = [(p, b) for p in presets for b in backends]
    for preset, backend in tqdm(jobs, desc="bundle bench", unit="artifact"):
        big = large_preset(preset)
        exp = get_exporter(backend)
        slots = args.rank if exp.has_adapter_slots else 0  # lora bundles swap in place
        art, figures = shared_export(work, preset, backend, None, args.max_context, slots=slots)
        adapter = preset_adapter(preset, args.rank)
        entry = {"adapter_slots": slots, **figures,
                 "steps": _cli_steps(work, art, adapter, f"{backend}-{preset}")}
        repeats = 1 if big else args.repeats
        # one program in memory at a time (at Gemma-2B an ExecuTorch program is 10 GB in this
        # process): the loads with a swap and the cold load first, each released when timed, then
        # the loaded runner that swaps in place
        verified = {}
        for kind in ("merged", "lora"):
            path = work / f"{backend}-{preset}-{kind}.bundle"
            entry[kind] = {"bytes": path.stat().st_size}
            if not big:
                raw = path.read_bytes()
                entry[kind]["build"] = time_call(lambda: build_bundle(art, adapter, kind, private_key=key), args.repeats)
                entry[kind]["verify"] = time_call(lambda: verify_bundle(raw, art, pub), args.repeats)
            vb = verified[kind] = verify_bundle(path, art, pub)

            def swap_load():
                exp.open_runner(art, swap=bundle_swap(vb, art)).prefill([1, 2, 3])

            entry[kind]["swap_load"] = time_call(swap_load, repeats)
        entry["cold_load"] = time_call(lambda: exp.open_runner(art).prefill([1, 2, 3]), repeats)
        loaded = exp.open_runner(art)
        entry["decode_tokens_per_s"] = _decode_rate(loaded)
        for kind, vb in verified.items():
            by_slots = kind == "lora" and slots
            if loaded.swaps_in_place or by_slots:  # the loaded runner keeps its program: swap + first token

                def swap_in_place():
                    if by_slots:
                        loaded.set_adapter(bundle_adapter(vb))
                    else:
                        loaded.swap(bundle_swap(vb, art, mapped=True))
                    loaded.prefill([1, 2, 3])

                entry[kind]["swap_in_place"] = time_call(swap_in_place, repeats)
                entry[kind]["decode_tokens_per_s"] = _decode_rate(loaded)
        loaded = verified = vb = None  # its session and swapped weights are released before the next artifact
        for kind in ("merged", "lora"):
            (work / f"{backend}-{preset}-{kind}.bundle").unlink()
        entry["merged_over_lora_bytes"] = entry["merged"]["bytes"] / entry["lora"]["bytes"]
        entry["artifact_over_merged_bytes"] = entry["artifact_bytes"] / entry["merged"]["bytes"]
        result["results"].setdefault(preset, {})[backend] = entry
    out = write_json(result, args.out)
    _plot(result, Path(out).with_suffix(".png"))
    for preset, per in result["results"].items():
        for backend, e in per.items():
            rss = "/".join(f"{e['steps'][k + '_merged']['peak_rss_bytes'] / 2**30:.2f}" for k in ("build", "verify", "apply"))
            print(f"{preset}/{backend}: artifact {e['artifact_bytes'] / 1e6:.2f} MB, merged {e['merged']['bytes'] / 1e6:.3f} MB, "
                  f"lora {e['lora']['bytes'] / 1e6:.3f} MB; merged build/verify/apply peak RSS {rss} GiB; "
                  f"swap+load {e['merged']['swap_load']['median_s'] * 1e3:.0f} ms"
                  + "".join(f", {k} swap in place {e[k]['swap_in_place']['median_s'] * 1e3:.0f} ms"
                            for k in ("merged", "lora") if "swap_in_place" in e[k])
                  + f" vs cold {e['cold_load']['median_s'] * 1e3:.0f} ms")
    print(f"wrote {out}")
    return result


def _decode_rate(runner, prompt: int = 16, tokens: int = 16) -> float:
    """Greedy decode tokens/s of a runner after a ``prompt``-token prefill (the cache reset first)."""
    import time

    runner.reset()
    tok = int(runner.prefill(list(range(1, prompt + 1))).argmax())
    t0 = time.perf_counter()
    for _ in range(tokens):
        tok = int(runner.decode(tok).argmax())
    return tokens / (time.perf_counter() - t0)


def _cli_steps(work: Path, art: Path, adapter, name: str) -> dict:
    """The bundle CLI steps on ``art`` in child processes: seconds and peak RSS of each. Leaves the
    bundles at ``work/NAME-KIND.bundle``; the applied artifacts are removed (disk)."""
    import shutil

    from ..lora import save_peft_adapter
    from . import run_child

    ad = work / f"adapter-{name}"
    shutil.rmtree(ad, ignore_errors=True)
    save_peft_adapter(adapter, ad)
    pem, pub = work / "keys" / "bench.pem", work / "keys" / "bench.pub"
    steps = {}
    for kind in ("merged", "lora"):
        b, applied = work / f"{name}-{kind}.bundle", work / f"{name}-{kind}-applied"
        b.unlink(missing_ok=True)
        shutil.rmtree(applied, ignore_errors=True)
        steps[f"build_{kind}"] = run_child(["bundle", "build", "--artifact", str(art), "--adapter", str(ad), "--kind",
                                            kind, "--sign-key", str(pem), "--out", str(b)], f"bundle build {kind}")
        steps[f"verify_{kind}"] = run_child(["bundle", "verify", "--artifact", str(art), "--pubkey", str(pub), str(b)],
                                            f"bundle verify {kind}")
        steps[f"apply_{kind}"] = run_child(["bundle", "apply", "--artifact", str(art), "--pubkey", str(pub), "--out",
                                            str(applied), str(b)], f"bundle apply {kind}")
        shutil.rmtree(applied)
    shutil.rmtree(ad)
    return steps


def _plot(result, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, art, merged, lora = [], [], [], []
    for preset, per in result["results"].items():
        for backend, e in per.items():
            labels.append(f"{preset}\n{backend}")
            art.append(e["artifact_bytes"])
            merged.append(e["merged"]["bytes"])
            lora.append(e["lora"]["bytes"])
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(labels)), 3.8))
    x = range(len(labels))
    for off, vals, name in ((-0.27, art, "artifact"), (0, merged, "merged bundle"), (0.27, lora, "lora bundle")):
        ax.bar([i + off for i in x], vals, 0.27, label=name)
    ax.set_yscale("log")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("bytes (log)")
    ax.set_title(f"bundle size vs artifact (rank-{result['rank']} FFN LoRA)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)
