"""Specialization service under load: p50/p99 latency and requests/s at concurrency 1, 8 and 32.

Starts the service (real uvicorn on 127.0.0.1, a free port, API keys on) in this process with a
tiny generator (trained here for a few steps on the tiny-llama preset, or --generator RUN) and an
ONNX artifact (exported here from the generator's edge model, or --artifact DIR), then drives a
bounded load from a second process (`python -m loragen_mobile.bench.serve --load ...`). Three
scenarios at each concurrency: "new" (POST a task never asked before: a generation, one generator
forward per task description so the bytes are reproducible), "cached" (POST a task already in the store) and "download" (GET the
bundle). Every request must succeed; the run fails after writing the JSON otherwise. Writes JSON
and a PNG.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from . import in_work_dir

SCENARIOS = ("new", "cached", "download")
# a few steps on a slice of the task suites: enough for a real generator, not a useful one
TINY_TRAIN = {"max_steps": 4, "tasks_per_step": 4, "examples_per_task": 2, "save_every": 4, "warmup_steps": 2,
              "max_length": 320, "expert_rank": 4, "expert_alpha": 4}


def add_arguments(p):
    p.add_argument("--generator", help="generator run directory (default: train a tiny one for a few steps)")
    p.add_argument("--artifact", help="exported artifact (default: ONNX export of the generator's edge model)")
    p.add_argument("--concurrency", default="1,8,32", help="comma-separated numbers of clients in flight")
    p.add_argument("--requests", type=int, default=64, help="requests per scenario and concurrency (at least the concurrency)")
    p.add_argument("--kind", choices=("merged", "lora"), default="merged")
    p.add_argument("--work-dir", help="keep the generator, artifact and store here (default: a temporary directory)")
    p.add_argument("--out", default="bench-out/serve.json")


def _tiny_generator(work: Path) -> Path:
    from ..data import group_by_task, make_suite, write_jsonl
    from ..generator import load_config, train
    from ..models import init_model_dir

    run = work / "generator"
    if (run / "generator.json").is_file():
        return run
    edge = work / "edge" if (work / "edge" / "config.json").is_file() else init_model_dir("tiny-llama", work / "edge", seed=0)
    recs = []
    for suite in ("reasoning", "tools"):
        for task_recs in list(group_by_task(make_suite(suite, "train", seed=0, per_task=4)).values())[:6]:
            recs += task_recs
    write_jsonl(recs, work / "train.jsonl")
    return train(load_config(None, TINY_TRAIN), edge, work / "train.jsonl", run, progress=False)


@in_work_dir("work_dir")
def run(args, work: Path) -> dict:
    import os
    import subprocess
    import time

    from ..bundle.keys import generate_keypair
    from ..errors import LoragenError
    from ..service import ServiceConfig, add_api_key, create_app, running
    from . import machine_info, write_json

    import importlib.util

    if importlib.util.find_spec("httpx") is None:
        raise LoragenError("the load process needs httpx: pip install httpx (it is in the test extra)")
    levels = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    if not levels or min(levels) < 1:
        raise LoragenError("--concurrency must list positive numbers")
    t0 = time.perf_counter()
    gen_dir = Path(args.generator) if args.generator else _tiny_generator(work)
    art = Path(args.artifact) if args.artifact else work / "tl-onnx"
    if not args.artifact and not art.exists():
        from ..exporters import get_exporter
        from ..fsutil import read_json_object
        from ..generator.store import META

        edge = read_json_object(gen_dir / META)["edge"]["path"]  # relative paths are relative to the run
        get_exporter("onnx").export(gen_dir / edge, art, max_context=64, progress=False)
    setup_s = time.perf_counter() - t0
    keys = work / f"keys-{os.getpid()}"
    keys.mkdir()
    generate_keypair(keys / "server.pem", keys / "server.pub")
    api_key = add_api_key(str(keys / "api.json"), "bench", ["*"], rate_per_minute=1e9)
    cfg = ServiceConfig(generator_dir=str(gen_dir), artifacts=[str(art)], sign_key=str(keys / "server.pem"),
                        store=str(work / f"store-{os.getpid()}"), api_keys=str(keys / "api.json"))
    result = {"bench": "serve", "machine": machine_info(), "generator": str(gen_dir), "artifact": art.name,
              "kind": args.kind, "requests_per_scenario": args.requests, "setup_s": setup_s, "levels": {}}
    app = create_app(cfg)
    spec = app.state.specializer
    with running(app) as url:
        plan = {"url": url, "key": api_key, "artifact": art.name, "kind": args.kind, "levels": levels,
                "requests": max(args.requests, max(levels)), "run_tag": os.urandom(4).hex()}
        proc = subprocess.run([sys.executable, "-m", "loragen_mobile.bench.serve", "--load", json.dumps(plan)],
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise LoragenError(f"the load process failed: {proc.stderr.strip().splitlines()[-1:]}")
        result["levels"] = json.loads(proc.stdout)
        value = spec.metrics.registry.get_sample_value
        result["server"] = {name: value(f"loragen_{name}_total") for name in
                            ("generations", "bundles_built", "cache_hits", "coalesced")}
        result["server"]["mean_batch"] = value("loragen_batch_size_sum") / max(1.0, value("loragen_batch_size_count"))
    errors = sum(s["errors"] for lv in result["levels"].values() for s in lv.values())
    result["errors"] = errors
    out = write_json(result, args.out)
    _plot(result, Path(out).with_suffix(".png"))
    for c, lv in result["levels"].items():
        print(f"concurrency {c}: " + "; ".join(
            f"{name} p50 {s['p50_ms']:.1f} ms p99 {s['p99_ms']:.1f} ms {s['rps']:.0f} req/s" for name, s in lv.items()))
    srv = result["server"]
    print(f"server: {srv['generations']:.0f} generator forwards for {srv['bundles_built']:.0f} bundles "
          f"(mean batch {srv['mean_batch']:.1f}), {srv['cache_hits']:.0f} cache hits; errors {errors}")
    print(f"wrote {out}")
    if errors:
        raise LoragenError(f"{errors} requests failed (see {out})")
    return result


# ------------------------------------------------------------------------------ the second process

def _percentile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q * (len(xs) - 1))))]


async def _scenario(client, n: int, concurrency: int, request) -> dict:
    """n requests, at most ``concurrency`` in flight; request(i) -> awaitable response."""
    import asyncio
    import time

    lat, errors, sample = [], 0, None
    it = iter(range(n))

    async def worker():
        nonlocal errors, sample
        for i in it:
            t = time.perf_counter()
            try:
                r = await request(i)
                ok = r.status_code in (200, 201)
            except Exception as e:  # noqa: BLE001 - counted as an error, first one kept
                ok, r = False, e
            lat.append(time.perf_counter() - t)
            if not ok:
                errors += 1
                sample = sample or (str(getattr(r, "status_code", "")) + " " + str(getattr(r, "text", r))[:200])

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    return {"requests": n, "errors": errors, "first_error": sample, "wall_s": wall, "rps": n / wall,
            "p50_ms": _percentile(lat, 0.5) * 1e3, "p99_ms": _percentile(lat, 0.99) * 1e3,
            "max_ms": max(lat) * 1e3}


async def _load(plan: dict) -> dict:
    import httpx

    headers = {"X-API-Key": plan["key"]}
    limits = httpx.Limits(max_connections=max(plan["levels"]) + 4)
    out = {}
    async with httpx.AsyncClient(base_url=plan["url"], headers=headers, limits=limits, timeout=600) as client:
        for c in plan["levels"]:
            n = plan["requests"]
            tasks = [f"Level {c} task {i} ({plan['run_tag']}): answer with the capital of the country named in the "
                     f"question, in one word." for i in range(n)]
            ids: list[str] = [""] * n

            async def post(i):
                r = await client.post("/v1/specializations",
                                      json={"task": tasks[i], "artifact": plan["artifact"], "kind": plan["kind"]})
                if r.status_code in (200, 201):
                    ids[i] = r.json()["id"]
                return r

            res = {"new": await _scenario(client, n, c, post)}
            res["cached"] = await _scenario(client, n, c, post)
            res["download"] = await _scenario(client, n, c, lambda i: client.get(f"/v1/bundles/{ids[i]}"))
            out[str(c)] = res
    return out


def _plot(result, png):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    levels = list(result["levels"])
    for name in SCENARIOS:
        axes[0].plot(levels, [result["levels"][c][name]["p50_ms"] for c in levels], marker="o", label=f"{name} p50")
        axes[0].plot(levels, [result["levels"][c][name]["p99_ms"] for c in levels], marker="x", ls="--",
                     label=f"{name} p99")
        axes[1].plot(levels, [result["levels"][c][name]["rps"] for c in levels], marker="o", label=name)
    axes[0].set(xlabel="concurrency", ylabel="latency (ms)", yscale="log", title="latency")
    axes[1].set(xlabel="concurrency", ylabel="requests/s", title="throughput")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def _main(argv: list[str]) -> int:
    import argparse
    import asyncio

    p = argparse.ArgumentParser()
    p.add_argument("--load", required=True)
    plan = json.loads(p.parse_args(argv).load)
    print(json.dumps(asyncio.run(_load(plan))))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
