"""Small-shape runs of the benchmark code paths that the full-size runs use (the figures
themselves are benchmarks, never asserted here)."""

from __future__ import annotations

import json

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import MAX_CTX
from loragen_mobile.bench.all import _render_bundle, _render_peers
from loragen_mobile.bundle import build_bundle
from loragen_mobile.cli import main
from loragen_mobile.lora import load_peft_adapter, random_adapter, save_peft_adapter
from loragen_mobile.models import build_model, target_module_names


def _digest(d):
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in d.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(d)).encode() + f.read_bytes())
    return h.hexdigest()


def test_bundle_bench_measures_each_cli_step(model_dirs, tmp_path, capsys):
    """`loragen bench bundle` on a tiny ONNX artifact with run-time adapter slots, which it exports
    into the work directory: every CLI step (build, verify, apply of both kinds) ran in its own
    process with a peak RSS, the bundle sizes are those of bundles built here, both kinds swapped into
    the loaded session (the lora bundle through the adapter slots), the artifact is reused only for
    its KV-cache length and is untouched, and the applied copies are cleaned up."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "model-tiny-llama").symlink_to(model_dirs["tiny-llama"])
    out = tmp_path / "bundle.json"
    argv = ["bench", "bundle", "--presets", "tiny-llama", "--backends", "onnx", "--repeats", "1",
            "--artifacts-dir", str(work), "--out", str(out)]
    assert main(argv + ["--max-context", str(MAX_CTX)]) == 0
    art = work / "tiny-llama-onnx-unquantized-slots16"
    before, result = _digest(art), out.read_bytes()
    # an artifact of the work directory is reused only for the KV-cache length it was exported with
    assert main(argv + ["--max-context", str(2 * MAX_CTX)]) == 2
    assert f"exported with max context {MAX_CTX}, this run asks for {2 * MAX_CTX}" in capsys.readouterr().err
    assert out.read_bytes() == result and _digest(art) == before
    e = json.loads(result)["results"]["tiny-llama"]["onnx"]
    assert e["adapter_slots"] == 16
    model = build_model("tiny-llama")
    adapter = random_adapter(model, target_module_names(model), r=16, alpha=16, seed=0)
    # as `bundle build --adapter` reads it: the PEFT round trip makes alpha a float, and the manifest
    # records it ("alpha":16.0), whose two more header bytes can cross the header's 8-byte padding
    save_peft_adapter(adapter, tmp_path / "adapter")
    adapter = load_peft_adapter(tmp_path / "adapter")
    key = Ed25519PrivateKey.generate()
    for kind in ("merged", "lora"):
        assert e[kind]["bytes"] == len(build_bundle(art, adapter, kind, private_key=key)), kind
    steps = ("build_merged", "verify_merged", "apply_merged", "build_lora", "verify_lora", "apply_lora")
    assert set(e["steps"]) == set(steps)
    for s in steps:  # a Python process with torch imported holds tens of MB at least
        assert e["steps"][s]["s"] > 0 and e["steps"][s]["peak_rss_bytes"] > 50 * 2**20, s
    # ONNX keeps its session: both kinds were also swapped into the loaded runner
    assert all("swap_in_place" in e[k] and e[k]["decode_tokens_per_s"] > 0 for k in ("merged", "lora"))
    assert sorted(p.name for p in work.iterdir()) == ["keys", "model-tiny-llama", art.name, art.name + ".export.json"]
    table = "\n".join(_render_bundle({"results": {"tiny-llama": {"onnx": e}}}))
    assert "| tiny-llama / onnx |" in table and "`bundle apply merged`" in table


def test_bench_all_preset_exports_each_artifact_once_and_the_peers_match_transformers(model_dirs, tmp_path):
    """`loragen bench all --preset` (ONNX, small shapes) is the code path of the full-size run: the
    benchmarks share one work directory, so each artifact is exported once (one export figure file per
    artifact, the same figures in every benchmark that uses it); the peers run ours and onnxruntime-genai's
    model builder output of the same model through onnxruntime-genai, and at fp32 both give
    transformers' greedy tokens."""
    import torch
    from transformers import AutoModelForCausalLM

    from loragen_mobile.bench import dir_bytes
    from loragen_mobile.exporters import read_artifact

    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    (work / "model-tiny-llama").symlink_to(model_dirs["tiny-llama"])
    assert main(["bench", "all", "--preset", "tiny-llama", "--work-dir", str(work), "--backends", "onnx",
                 "--only", "runtime,quant,bundle,speedup,peers", "--prompt-tokens", "8,24", "--repeats", "1",
                 "--out-dir", str(out), "--report", str(out / "results.md")]) == 0
    ours = ["tiny-llama-onnx-unquantized", "tiny-llama-onnx-8da4w-b32", "tiny-llama-onnx-unquantized-unmerged",
            "tiny-llama-onnx-unquantized-fp16", "tiny-llama-onnx-unquantized-slots16"]
    peers = ["tiny-llama-og-builder-fp32", "tiny-llama-og-builder-fp16", "tiny-llama-og-builder-int4"]
    assert sorted(p.name for p in work.iterdir()) == sorted(
        ["keys", "model-tiny-llama", "adapter-tiny-llama-r16"] + ours + peers + [f"{n}.export.json" for n in ours + peers])
    assert {read_artifact(work / n).meta["max_context"] for n in ours} == {161}  # peers' 128 + 32 + 1 > 24 + 40
    figures = {n: json.loads((work / f"{n}.export.json").read_text()) for n in ours}
    res = {n: json.loads((out / f"{n}.json").read_text()) for n in ("runtime", "quant", "bundle", "speedup", "peers")}
    fp32, q = figures["tiny-llama-onnx-unquantized"], figures["tiny-llama-onnx-8da4w-b32"]
    assert res["peers"]["results"]["onnx/fp32"]["ours"]["export_s"] == fp32["export_s"]
    assert res["speedup"]["exports"]["onnx"]["loragen"]["export_s"] == fp32["export_s"]
    assert res["bundle"]["results"]["tiny-llama"]["onnx"]["export_s"] == \
        figures["tiny-llama-onnx-unquantized-slots16"]["export_s"]
    assert res["quant"]["results"]["tiny-llama"]["onnx"]["unquantized"]["export_s"] == fp32["export_s"]
    assert res["quant"]["results"]["tiny-llama"]["onnx"]["8da4w-b32"]["export_s"] == q["export_s"]
    assert res["peers"]["results"]["onnx/8da4w-b32"]["ours"]["export_peak_rss_bytes"] == q["export_peak_rss_bytes"]
    assert res["speedup"]["exports"]["onnx"]["conventional"]["export_s"] == \
        figures["tiny-llama-onnx-unquantized-unmerged"]["export_s"]
    assert [r["artifact"] for r in res["runtime"]["results"]["model-tiny-llama"][1:]] == sorted(ours[:2] + ours[3:])
    assert {r["artifact"]: r["adapter_slots"] for r in res["runtime"]["results"]["model-tiny-llama"][1:]}[
        "tiny-llama-onnx-unquantized-slots16"] == 16
    assert [r["compression_ratio"] for r in res["speedup"]["backends"]["onnx"]] == [(8 + 16) / 16, (24 + 16) / 16]
    row = res["peers"]["results"]["onnx/fp32"]
    prompt = res["peers"]["prompt_ids"]
    assert 0 < len(prompt) <= 128
    model = AutoModelForCausalLM.from_pretrained(model_dirs["tiny-llama"], dtype=torch.float32)
    hf = model.generate(torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32, do_sample=False)[0, len(prompt):]
    assert row["ours"]["tokens"] == row["peer"]["tokens"] == hf.tolist() and row["same_tokens"] is True
    assert row["peer"]["tool"] == "og-builder" and (work / "tiny-llama-og-builder-fp32" / "genai_config.json").exists()
    assert row["peer"]["artifact_bytes"] == dir_bytes(work / "tiny-llama-og-builder-fp32")
    assert row["ratios"]["decode_tokens_per_s"] == row["ours"]["decode_tokens_per_s"] / row["peer"]["decode_tokens_per_s"]
    # fp16: our artifact (fp16 weights and KV cache) gives the same tokens through onnxruntime-genai; the
    # builder's `-e cpu -p fp16` model does not run on onnxruntime's CPU provider (onnxruntime-genai
    # issue 2009), which the row records beside our figures
    row16 = res["peers"]["results"]["onnx/fp16"]
    assert row16["ours"]["tokens"] == hf.tolist() and row16["ours"]["decode_tokens_per_s"] > 0
    assert "Shape mismatch attempting to re-use buffer" in row16["peer"]["error"] and row16["same_tokens"] is None
    assert read_artifact(work / "tiny-llama-onnx-unquantized-fp16").meta["precision"] == "fp16"
    summary = json.loads((out / "all.json").read_text())
    assert list(summary["commands"]) == ["peers", "speedup", "bundle", "quant", "runtime"]
    assert summary["total_wall_s"] >= sum(summary["wall_s"].values())
    # the benchmark process's own peak RSS, started afresh for each benchmark
    assert list(summary["peak_rss_bytes"]) == list(summary["commands"])
    assert all(2**27 < v < 2**33 for v in summary["peak_rss_bytes"].values()), summary["peak_rss_bytes"]
    report = (out / "results.md").read_text()
    gib = summary["peak_rss_bytes"]["peers"] / 2**30
    assert f"min; peak RSS of the benchmark process {gib:.1f} GiB; plot: `{out / 'peers.png'}`)" in report
    assert f"`loragen bench peers --preset tiny-llama --work-dir {work} --backends onnx" in report
    rendered = "\n".join(_render_peers(res["peers"]))
    assert "| onnx/fp32 | og-builder |" in rendered and "| onnx/fp16 | og-builder (failed: og run of" in rendered


def test_bench_all_refuses_bad_preset_arguments_in_one_line(tmp_path, capsys):
    """Bad `bench all --preset` arguments: exit 2, one line naming the problem, nothing created."""
    work = tmp_path / "w"
    cases = [(["--preset", "tiny-llama"], "--preset and --work-dir go together"),
             (["--preset", "no-such", "--work-dir", str(work)], "unknown --preset no-such"),
             (["--preset", "tiny-llama", "--work-dir", str(work), "--prompt-tokens", "100,abc"],
              "--prompt-tokens takes positive token counts"),
             (["--preset", "tiny-llama", "--work-dir", str(work), "--repeats", "0"], "--repeats must be at least 1")]
    for argv, msg in cases:
        assert main(["bench", "all", *argv, "--out-dir", str(tmp_path / "out")]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and msg in err[0], (argv, err)
    assert not work.exists() and not (tmp_path / "out").exists()


def test_a_benchmark_without_a_work_directory_leaves_nothing_behind(tmp_path, monkeypatch):
    """Without --artifacts-dir / --work-dir a benchmark works in a temporary directory and removes it
    with its exports when it ends, also when it fails (at the full-size presets one run left
    gigabytes in the temporary directory); a work directory that is given is kept."""
    import tempfile

    import pytest

    from loragen_mobile.bench import work_dir

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    out = tmp_path / "quant.json"
    assert main(["bench", "quant", "--presets", "tiny-llama", "--backends", "onnx", "--schemes", "none",
                 "--max-context", str(MAX_CTX), "--out", str(out)]) == 0
    e = json.loads(out.read_text())["results"]["tiny-llama"]["onnx"]["unquantized"]
    assert e["artifact_bytes"] > 0 and e["merged_bundle_bytes"] > 0
    assert list(tmp.iterdir()) == []
    with pytest.raises(RuntimeError):
        with work_dir(None) as w:
            (w / "f").write_bytes(b"x")
            raise RuntimeError("a failing benchmark")
    assert not w.exists() and list(tmp.iterdir()) == []
    with work_dir(str(tmp_path / "kept")) as w:
        (w / "f").write_bytes(b"x")
    assert (tmp_path / "kept" / "f").read_bytes() == b"x"


def test_a_child_killed_by_a_signal_is_reported_as_such(tmp_path, monkeypatch):
    """A benchmark's child process (an export, a peer's tool) that the kernel kills says so: at
    Gemma-2B optimum-executorch's export was killed by the out-of-memory killer, and the error
    recorded was its last stderr line, a warning's source line. A child that raises still reports
    its exception."""
    import pytest

    from loragen_mobile.bench import run_child
    from loragen_mobile.errors import LoragenError

    (tmp_path / "killed_child.py").write_text(
        "import os, signal, sys\n"
        "sys.stderr.write('    return cls.__new__(cls, *args)\\n'); sys.stderr.flush()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n")
    (tmp_path / "raising_child.py").write_text("raise ValueError('no such config field')\n")
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    with pytest.raises(LoragenError) as e:
        run_child([], "a peer's export", module="killed_child")
    assert str(e.value) == ("a peer's export failed: killed by SIGKILL; on Linux usually the kernel's "
                            "out-of-memory killer (see dmesg)")
    with pytest.raises(LoragenError) as e:
        run_child([], "a peer's export", module="raising_child")
    assert str(e.value) == "a peer's export failed: ValueError: no such config field"


def test_a_failed_peer_export_leaves_nothing_in_the_work_directory(tmp_path, monkeypatch):
    """A peer's export that dies half way (killed for memory, say) removes its partial output: the
    work directory holds only what later runs can reuse."""
    import pytest

    from loragen_mobile.bench import peers
    from loragen_mobile.errors import LoragenError

    def dies(args, what, **kw):
        out = tmp_path / "W" / "gemma-2b-og-builder-fp32.partial"
        out.mkdir(parents=True)
        (out / "model.onnx.data").write_bytes(b"half")
        raise LoragenError(f"{what} failed: killed by SIGKILL")

    monkeypatch.setattr("loragen_mobile.bench.run_child", dies)
    with pytest.raises(LoragenError, match="killed by SIGKILL"):
        peers._peer_export("og-builder", tmp_path / "model", tmp_path / "W" / "gemma-2b-og-builder-fp32", [], 64, None)
    assert list((tmp_path / "W").iterdir()) == []
