"""The config layer, the dtype vocabulary, Hugging Face ids from the local cache, the import layers."""

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from loragen_mobile import dtypes, models
from loragen_mobile.config import from_mapping, load_section, load_yaml
from loragen_mobile.edge_training import EdgeTrainConfig
from loragen_mobile.errors import LoragenError
from loragen_mobile.generator.train import load_config

ROOT = Path(__file__).parent.parent


@dataclass
class _Cfg:
    name: str
    steps: int = 3
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    limit: int | None = None
    tags: list[str] | None = None
    on: bool = False


def test_from_mapping_types_and_overrides():
    c = from_mapping(_Cfg, {"name": "a", "lr": 1, "betas": [0.5, 0.6], "tags": ["x"]}, "t", {"steps": 9, "lr": None})
    assert c == _Cfg("a", 9, 1.0, (0.5, 0.6), None, ["x"], False)
    assert isinstance(c.lr, float) and isinstance(c.betas, tuple)
    for bad, match in [({"name": "a", "nope": 1}, r"t: unknown key\(s\) nope; allowed: name, steps"),
                       ({"name": "a", "steps": "3"}, "t: steps must be an integer, got '3'"),
                       ({"name": "a", "steps": True}, "t: steps must be an integer, got True"),
                       ({"name": "a", "betas": [1, 2, 3]}, "t: betas must be a list"),
                       ({"name": "a", "limit": 1.5}, "t: limit must be an integer or null, got 1.5"),
                       ({"name": "a", "on": "yes"}, "t: on must be true or false"),
                       ({}, r"t: missing key\(s\) name")]:
        with pytest.raises(LoragenError, match=match) as e:
            from_mapping(_Cfg, bad, "t")
        assert e.value.code == "config"


def test_yaml_loader_one_error_style(tmp_path):
    f = tmp_path / "c.yaml"
    with pytest.raises(LoragenError, match="does not exist") as e:
        load_yaml(f)
    assert e.value.code == "not-found"
    for text, match in [("a: [1,\n", "is not valid YAML"), ("- 1\n- 2\n", "must hold a mapping, not a list"),
                        ("edge: 3\n", "'edge' must be a mapping")]:
        f.write_text(text)
        with pytest.raises(LoragenError, match=match) as e:
            load_section(f, "edge")
        assert e.value.code == "config"
    f.write_text("")
    assert load_section(f, "edge") == {}
    f.write_text("lr: 0.5\n")
    assert load_section(f, "generator", whole_if_missing=True) == {"lr": 0.5}
    assert load_section(f, "edge") == {}


def test_training_configs_read_through_the_layer(tmp_path):
    g = load_config(ROOT / "configs" / "tiny.yaml", {"max_steps": 7})
    assert g.max_steps == 7 and isinstance(g.betas, tuple)
    e = EdgeTrainConfig.load(ROOT / "configs" / "tiny.yaml", {"lr": 0.25})
    assert e.lr == 0.25
    bad = tmp_path / "bad.yaml"
    bad.write_text("generator:\n  lr: fast\nedge:\n  max_stepz: 3\n")
    with pytest.raises(LoragenError, match=f"{bad}: generator: lr must be a number, got 'fast'"):
        load_config(bad)
    with pytest.raises(LoragenError, match=rf"{bad}: edge: unknown key\(s\) max_stepz"):
        EdgeTrainConfig.load(bad)
    for cfg in sorted((ROOT / "configs").glob("*.yaml")):  # every shipped config reads
        assert load_config(cfg).rank >= 1 and EdgeTrainConfig.load(cfg).max_steps >= 1


def test_one_dtype_vocabulary():
    for names, td, st, size in [(("fp32", "float32", "F32", "torch.float32"), torch.float32, "F32", 4),
                                (("fp16", "float16", "F16"), torch.float16, "F16", 2),
                                (("bf16", "bfloat16", "BF16"), torch.bfloat16, "BF16", 2),
                                (("int8", "I8"), torch.int8, "I8", 1)]:
        for n in names + (td,):
            d = dtypes.lookup(n)
            assert (d.torch, d.st, d.itemsize) == (td, st, size)
    assert dtypes.torch_name(torch.bfloat16) == "bfloat16"
    assert models.parse_dtype("bf16") is torch.bfloat16 and models.parse_dtype("float16") is torch.float16
    with pytest.raises(LoragenError, match="unknown dtype 'int8'; use one of fp32, fp16, bf16"):
        models.parse_dtype("int8")
    t = torch.tensor([[1.5, -2.0], [65504.0, 0.0]], dtype=torch.bfloat16)
    raw = dtypes.tensor_bytes(t)
    assert len(raw) == 8 and torch.equal(dtypes.from_bytes(raw, "BF16", [2, 2]), t)


# ------------------------------------------------------------------ Hugging Face ids (local cache only)


def _hub_cache(root: Path, repo: str, model_dir: Path, revision: str = "0123456789abcdef0123456789abcdef01234567"):
    """The layout huggingface_hub writes: models--ORG--NAME/{refs/main, snapshots/REV/...}."""
    base = root / ("models--" + repo.replace("/", "--"))
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(revision)
    shutil.copytree(model_dir, base / "snapshots" / revision)
    return base / "snapshots" / revision


def test_hub_id_resolves_from_the_local_cache(tmp_path, preset_dirs, generator_run, monkeypatch):
    import huggingface_hub.constants as hc

    cache = tmp_path / "hub"
    snap = _hub_cache(cache, "acme/tiny-llama-edge", preset_dirs["tiny-llama"])
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models.resolve_model_dir("acme/tiny-llama-edge") == snap
    m = models.load_model("acme/tiny-llama-edge")
    ref = models.load_model(preset_dirs["tiny-llama"])
    x = torch.tensor([[1, 40, 50, 60]])
    assert torch.equal(m(x).logits, ref(x).logits)
    want = models.load_tokenizer(preset_dirs["tiny-llama"])("hi there")["input_ids"]
    assert models.load_tokenizer("acme/tiny-llama-edge")("hi there")["input_ids"] == want and len(want) == 9
    # a generator takes its edge model as an id too (same weights: the binding holds)
    from loragen_mobile.generator import generate_adapter, load_generator

    g = load_generator(generator_run, edge_dir="acme/tiny-llama-edge")
    assert g.edge_dir == snap.resolve()
    a, b = generate_adapter(g, "Reverse the word."), generate_adapter(load_generator(generator_run), "Reverse the word.")
    assert all(torch.equal(a.factors[k][0], b.factors[k][0]) for k in a.factors)
    with pytest.raises(LoragenError, match="model 'acme/other' is neither a directory nor in the local "
                       "Hugging Face cache .*; download it first with: hf download acme/other") as e:
        models.load_model("acme/other")
    assert e.value.code == "not-found"
    with pytest.raises(LoragenError, match="model directory nope does not exist"):
        models.read_config("nope/")


def test_hub_id_on_the_command_line(tmp_path, preset_dirs):
    cache = tmp_path / "hub"
    _hub_cache(cache, "acme/tiny-gemma", preset_dirs["tiny-gemma"])
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    out = tmp_path / "merged"
    adapter = tmp_path / "adapter"
    from loragen_mobile.lora import random_adapter, save_peft_adapter

    base = models.load_model(preset_dirs["tiny-gemma"])
    save_peft_adapter(random_adapter(base, models.target_module_names(base), r=2, alpha=4, seed=1), adapter)
    r = subprocess.run([sys.executable, "-m", "loragen_mobile", "merge", "--model", "acme/tiny-gemma",
                        "--adapter", str(adapter), "--out", str(out)], capture_output=True, text=True, env=env,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (out / "config.json").is_file()
    r = subprocess.run([sys.executable, "-m", "loragen_mobile", "merge", "--model", "acme/missing",
                        "--adapter", str(adapter), "--out", str(tmp_path / "m2")], capture_output=True, text=True,
                       env=env, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("loragen: error: not-found: model 'acme/missing' is neither")
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "m2").exists()


def test_import_layers_hold():
    """The layering in pyproject.toml ([tool.importlinter]) holds for every import, lazy ones included."""
    exe = Path(sys.executable).with_name("lint-imports")
    r = subprocess.run([str(exe)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:]
    assert "Contracts: " in r.stdout and " broken" in r.stdout and ", 0 broken." in r.stdout


def test_service_settings_from_yaml_and_options(tmp_path):
    from loragen_mobile.service import load_service_config

    f = tmp_path / "service.yaml"
    f.write_text("service:\n  generator_dir: runs/gen\n  artifacts: [art/a, art/b]\n  sign_key: k.pem\n"
                 "  store: bundles\n  max_batch: 4\n  port: 9000\n")
    c = load_service_config(f, {"port": 9100, "store": None})
    assert (c.artifacts, c.max_batch, c.port, c.store, c.host) == (["art/a", "art/b"], 4, 9100, "bundles", "127.0.0.1")
    f.write_text("service:\n  generator_dir: g\n  artifacts: a\n  sign_key: k\n  store: s\n")
    with pytest.raises(LoragenError, match=f"{f}: service: artifacts must be a list, got 'a'") as e:
        load_service_config(f)
    assert e.value.code == "config"
    with pytest.raises(LoragenError, match=f"missing --generator, --artifact, --sign-key, --store "
                       rf"\(or their keys in {tmp_path / 'none.yaml'}'s service section\)"):
        (tmp_path / "none.yaml").write_text("edge: {}\n")
        load_service_config(tmp_path / "none.yaml")
    with pytest.raises(LoragenError, match="--header-timeout-s, --body-timeout-s"):
        load_service_config(None, {"generator_dir": "g", "artifacts": ["a"], "sign_key": "k", "store": "s",
                                   "header_timeout_s": 0.0})


def test_export_a_hub_id_with_a_recipe_of_its_family(tmp_path, preset_dirs):
    cache = tmp_path / "hub"
    _hub_cache(cache, "acme/tiny-llama", preset_dirs["tiny-llama"])
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}

    def loragen(*argv):
        return subprocess.run([sys.executable, "-m", "loragen_mobile", *argv], capture_output=True, text=True,
                              env=env, cwd=tmp_path)

    r = loragen("export", "--recipe", str(ROOT / "export/tiny-gemma/onnx.yaml"), "--model", "acme/tiny-llama",
                "--out", "wrong")
    assert r.returncode == 2 and not (tmp_path / "wrong").exists() and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith(f"loragen: error: config: recipe {ROOT / 'export/tiny-gemma/onnx.yaml'} is written "
                               "for tiny-gemma (gemma); the model in ")
    assert r.stderr.rstrip().endswith("is 'llama': use a recipe of its family")
    r = loragen("export", "--recipe", str(ROOT / "export/tiny-llama/onnx.yaml"), "--model", "acme/tiny-llama",
                "--out", "art", "--max-context", "32")
    assert r.returncode == 0, r.stderr
    r = loragen("validate", "--artifact", "art", "--model", "acme/tiny-llama")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: 12/12 checks passed (onnx, fp32)" in r.stdout
