"""Small-shape runs of the benchmark code paths that the full-size runs use (the figures
themselves are benchmarks, never asserted here)."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from loragen_mobile.bench.all import _render_bundle, _render_peers
from loragen_mobile.bundle import build_bundle
from loragen_mobile.cli import main
from loragen_mobile.lora import random_adapter
from loragen_mobile.models import build_model, target_module_names


def _digest(d):
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in d.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(d)).encode() + f.read_bytes())
    return h.hexdigest()


def _work_with(tmp_path, model_dir, art, name):
    """A benchmark work directory holding the shared tiny model and artifact (links) under the
    names the benchmark reuses."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "model-tiny-llama").symlink_to(model_dir)
    (work / name).symlink_to(art)
    return work


def test_bundle_bench_measures_each_cli_step(artifacts, model_dirs, tmp_path, capsys):
    """`loragen bench bundle` on a shared tiny artifact: every CLI step (build, verify, apply of
    both kinds) ran in its own process with a peak RSS, the bundle sizes are those of bundles
    built here, the artifact is untouched and the applied copies are cleaned up."""
    art = artifacts("onnx", "tiny-llama")
    before = _digest(art)
    work = _work_with(tmp_path, model_dirs["tiny-llama"], art, "onnx-tiny-llama")
    out = tmp_path / "bundle.json"
    assert main(["bench", "bundle", "--presets", "tiny-llama", "--backends", "onnx", "--repeats", "1",
                 "--artifacts-dir", str(work), "--out", str(out)]) == 0
    e = json.loads(out.read_text())["results"]["tiny-llama"]["onnx"]
    model = build_model("tiny-llama")
    adapter = random_adapter(model, target_module_names(model), r=16, alpha=16, seed=0)
    key = Ed25519PrivateKey.generate()
    for kind in ("merged", "lora"):
        assert e[kind]["bytes"] == len(build_bundle(art, adapter, kind, private_key=key)), kind
    steps = ("build_merged", "verify_merged", "apply_merged", "build_lora", "verify_lora", "apply_lora")
    assert set(e["steps"]) == set(steps)
    for s in steps:  # a Python process with torch imported holds tens of MB at least
        assert e["steps"][s]["s"] > 0 and e["steps"][s]["peak_rss_bytes"] > 50 * 2**20, s
    # ONNX keeps its session: both kinds were also swapped into the loaded runner
    assert all("swap_in_place" in e[k] and e[k]["decode_tokens_per_s"] > 0 for k in ("merged", "lora"))
    assert sorted(p.name for p in work.iterdir()) == ["keys", "model-tiny-llama", "onnx-tiny-llama"]
    assert _digest(art) == before
    table = "\n".join(_render_bundle({"results": {"tiny-llama": {"onnx": e}}}))
    assert "| tiny-llama / onnx |" in table and "`bundle apply merged`" in table


def test_peers_bench_runs_ours_and_the_model_builders_through_og(artifacts, model_dirs, tmp_path):
    """`loragen bench peers` (ONNX, fp32) on the shared tiny artifact and onnxruntime-genai's model
    builder output of the same model: both, run by onnxruntime-genai in their own processes, give
    transformers' greedy tokens, and the ratios are ours over the peer's figures."""
    import torch
    from transformers import AutoModelForCausalLM

    from loragen_mobile.bench import dir_bytes

    art = artifacts("onnx", "tiny-llama")
    before = _digest(art)
    work = _work_with(tmp_path, model_dirs["tiny-llama"], art, "ours-onnx-fp32")
    out = tmp_path / "peers.json"
    assert main(["bench", "peers", "--backends", "onnx", "--precisions", "fp32", "--prompt-tokens", "12",
                 "--decode-tokens", "6", "--repeats", "1", "--max-context", "32", "--work-dir", str(work),
                 "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    row = r["results"]["onnx/fp32"]
    prompt = r["prompt_ids"]
    assert 0 < len(prompt) <= 12
    model = AutoModelForCausalLM.from_pretrained(model_dirs["tiny-llama"], dtype=torch.float32)
    hf = model.generate(torch.tensor([prompt]), max_new_tokens=6, min_new_tokens=6, do_sample=False)[0, len(prompt):]
    assert row["ours"]["tokens"] == row["peer"]["tokens"] == hf.tolist()
    assert row["same_tokens"] is True
    assert row["peer"]["tool"] == "og-builder" and (work / "og-builder-fp32" / "genai_config.json").exists()
    assert row["ours"]["artifact_bytes"] == dir_bytes(art)
    assert row["peer"]["artifact_bytes"] == dir_bytes(work / "og-builder-fp32")
    assert row["peer"]["export_peak_rss_bytes"] > 50 * 2**20 and "export_s" not in row["ours"]  # ours reused
    assert row["ratios"]["decode_tokens_per_s"] == row["ours"]["decode_tokens_per_s"] / row["peer"]["decode_tokens_per_s"]
    assert _digest(art) == before
    assert "| onnx/fp32 | og-builder |" in "\n".join(_render_peers(r))
