import os
import warnings

from pathlib import Path

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", category=DeprecationWarning)


@pytest.fixture(scope="session")
def preset_dirs(tmp_path_factory):
    """The two edge presets saved once as HF directories, shared by every test."""
    from loragen_mobile.models import init_model_dir

    root = tmp_path_factory.mktemp("presets")
    return {p: init_model_dir(p, root / p, seed=0) for p in ("tiny-llama", "tiny-gemma")}


# ------------------------------------------------------------------ exported artifacts, shared
# XNNPACK lowering is the slow step (tens of seconds per export): every test module that needs an
# exported artifact shares these session fixtures.

from loragen_mobile.exporters import get_exporter  # noqa: E402
from loragen_mobile.models import build_model, build_tokenizer  # noqa: E402

PRESETS = ("tiny-llama", "tiny-gemma")
MAX_CTX = 64


def _make_model_dir(preset: str, out: Path) -> Path:
    model = build_model(preset, seed=3)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (0.0 if preset == "tiny-gemma" else 1.0))
    model.save_pretrained(out)
    build_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("exporters")


@pytest.fixture(scope="session")
def model_dirs(workdir):
    return {p: _make_model_dir(p, workdir / f"model-{p}") for p in PRESETS}


@pytest.fixture(scope="session")
def artifacts(workdir, model_dirs):
    cache: dict[tuple[str, str], Path] = {}

    def get(backend: str, preset: str) -> Path:
        key = (backend, preset)
        if key not in cache:
            out = workdir / f"{backend}-{preset}"
            get_exporter(backend).export(model_dirs[preset], out, max_context=MAX_CTX, progress=False)
            cache[key] = out
        return cache[key]

    return get


#: the quantization scheme each backend's shared quantized artifact is exported with (both presets)
QUANT_SCHEMES = {"executorch": "8da4w-g32", "onnx": "int4-b32", "coreml": "int4-b32"}


@pytest.fixture(scope="session")
def quant_artifacts(workdir, model_dirs):
    """Quantized exports of the shared test models, once per (backend, preset, scheme) and session."""
    cache: dict[tuple[str, str, str], Path] = {}

    def get(backend: str, preset: str, scheme: str | None = None) -> Path:
        scheme = scheme or QUANT_SCHEMES[backend]
        key = (backend, preset, scheme)
        if key not in cache:
            out = workdir / f"{backend}-{preset}-{scheme}"
            get_exporter(backend).export(model_dirs[preset], out, max_context=MAX_CTX, quantize=scheme, progress=False)
            cache[key] = out
        return cache[key]

    return get


# ------------------------------------------------------------------ a small trained generator
# Mechanics tests (shapes, gradients, exactness, adapters, bundles, the service) share one
# generator trained for a few steps on a slice of both suites; accuracy is measured by
# `loragen eval` (docs/results.md), not here.

GEN_OVERRIDES = {"max_steps": 4, "tasks_per_step": 4, "examples_per_task": 2, "save_every": 2,
                 "warmup_steps": 2, "max_length": 320, "expert_rank": 4, "expert_alpha": 4}


@pytest.fixture(scope="session")
def gen_data(tmp_path_factory):
    from loragen_mobile.data import group_by_task, make_suite, write_jsonl

    recs = []
    for suite in ("reasoning", "tools"):
        groups = group_by_task(make_suite(suite, "train", seed=0, per_task=4))
        for task_recs in list(groups.values())[:6]:
            recs += task_recs
    path = tmp_path_factory.mktemp("gen-data") / "train.jsonl"
    write_jsonl(recs, path)
    return path


@pytest.fixture(scope="session")
def generator_run(tmp_path_factory, preset_dirs, gen_data):
    from loragen_mobile.generator import load_config, train

    out = tmp_path_factory.mktemp("gen-run") / "run"
    cfg = load_config(Path(__file__).parent.parent / "configs" / "tiny.yaml", GEN_OVERRIDES)
    return train(cfg, preset_dirs["tiny-llama"], gen_data, out, progress=False)


# ------------------------------------------------------------------ the shipped trained edge model
# loragen_mobile/assets/tiny-llama-edge answers its tasks and ends with </s>: the model for tests of
# the prompt contract and of stopping at EOS, exported once per backend and shared.

EDGE_ASSET = Path(__file__).resolve().parents[1] / "loragen_mobile" / "assets" / "tiny-llama-edge"
EDGE_MAX_CTX = 96


@pytest.fixture(scope="session")
def edge_artifacts(workdir):
    cache: dict[str, Path] = {}

    def get(backend: str) -> Path:
        if backend not in cache:
            out = workdir / f"edge-{backend}"
            get_exporter(backend).export(EDGE_ASSET, out, max_context=EDGE_MAX_CTX, progress=False)
            cache[backend] = out
        return cache[backend]

    return get


# ------------------------------------------------------------------ shared runtime helpers

def og_greedy(model_path, ids: list[int], max_new: int, model=None, adapters=None, adapter: str | None = None) -> list[int]:
    """onnxruntime-genai's own generation loop, greedy: the new token ids (EOS included if reached).
    ``model``: an og.Model already loaded; ``adapter``: the name of an adapter in ``adapters`` to activate."""
    import onnxruntime_genai as og

    model = model if model is not None else og.Model(str(model_path))
    params = og.GeneratorParams(model)
    params.set_search_options(do_sample=False, max_length=len(ids) + max_new)
    gen = og.Generator(model, params)
    if adapter is not None:
        gen.set_active_adapter(adapters, adapter)
    gen.append_tokens(ids)
    new = []
    while not gen.is_done():
        gen.generate_next_token()
        new.append(int(gen.get_next_tokens()[0]))
    return new


def random_merged_adapter(model_dir, tmp_path, seed: int = 5):
    """A random rank-8 PEFT adapter on the default targets, and the PEFT-merged eager model."""
    from peft import PeftModel

    from loragen_mobile import lora
    from loragen_mobile.models import load_model, target_module_names

    base = load_model(model_dir, dtype=torch.float32)
    ad = lora.random_adapter(base, target_module_names(base), r=8, alpha=16, seed=seed, std=0.15)
    lora.save_peft_adapter(ad, tmp_path / "adapter")
    merged = PeftModel.from_pretrained(base, str(tmp_path / "adapter")).merge_and_unload().eval()
    return ad, merged


def signed_bundle(art, ad, kind: str, tmp_path) -> tuple[bytes, object]:
    """A bundle of ``ad`` for ``art``, signed with a new key pair: (bytes, public key)."""
    from loragen_mobile.bundle import build_bundle
    from loragen_mobile.bundle.keys import generate_keypair, load_private_key, load_public_key

    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    raw = build_bundle(art, ad, kind, private_key=load_private_key(tmp_path / "k.pem"))
    return raw, load_public_key(tmp_path / "k.pub")


def swap_with_signed_bundle(art, model_dir, tmp_path, seed: int = 5):
    """A random PEFT adapter -> signed merged bundle -> swapped copy of ``art`` (no re-export).
    Returns (swapped artifact dir, the PEFT-merged eager model it must equal)."""
    from loragen_mobile.bundle import apply_bundle

    ad, merged = random_merged_adapter(model_dir, tmp_path, seed)
    raw, pub = signed_bundle(art, ad, "merged", tmp_path)
    swapped = tmp_path / "swapped"
    apply_bundle(raw, art, swapped, pub)
    return swapped, merged


def prompt_text(system, user_input: str) -> str:
    """The training layout written out independently of the chat template (a test oracle):
    system "\n" input "\n", the system part optional; the template adds BOS in front."""
    return (f"{system}\n" if system else "") + f"{user_input}\n"


# ------------------------------------------------------------------ every model family
# The tiny presets of the families added after llama/gemma (tests/test_families.py), each saved once
# with random weights whose greedy continuations are printable ASCII (so the stock ExecuTorch runner
# can hand every token to Python as text) and exported once per backend, shared.

FAMILY_PRESETS = ("tiny-llama3", "tiny-qwen2", "tiny-qwen3", "tiny-gemma2", "tiny-gemma3")
# the families exported to Core ML: tiny-qwen3's features (q/k norm, GQA, tied embeddings) are
# exercised there by tiny-gemma3 and tiny-llama3; ONNX takes all five
SLOW_BACKEND_PRESETS = tuple(p for p in FAMILY_PRESETS if p != "tiny-qwen3")
# the families exported to ExecuTorch (the slowest export): the two with attention features of their
# own (sliding windows, soft-capping, q/k norm, per-type rotary tables); Llama 3 and Qwen 2 differ from
# tiny-llama (exported to ExecuTorch by the shared fixtures) only in what the exporters' common module
# computes (rope scaling, q/k/v bias), which ONNX and Core ML check for them
ET_FAMILY_PRESETS = ("tiny-gemma2", "tiny-gemma3")
FAMILY_MAX_CTX = 80


def make_family_model_dir(model, out: Path, seed: int = 7) -> Path:
    """Save ``model`` with larger random weights (2-D: std 0.15; norms around their identity, 1 for
    ``w`` norms and 0 for Gemma's ``1 + w`` ones; biases std 0.1) and the byte tokenizer. Rows of
    ``lm_head`` of tokens that are not printable ASCII are zeroed, so greedy decoding emits text."""
    from loragen_mobile.models import save_tokenizer

    tok = build_tokenizer()
    gemma = model.config.model_type.startswith("gemma")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1 + (0.0 if gemma else 1.0))
        printable = {tok(chr(c), add_special_tokens=False).input_ids[0] for c in range(32, 127)}
        keep = torch.zeros(model.config.vocab_size, dtype=torch.bool)
        keep[sorted(printable)] = True
        model.lm_head.weight[~keep] = 0.0  # tied presets: the embedding rows too (never used by ASCII prompts)
    model.save_pretrained(out)
    save_tokenizer(tok, out)
    return out


@pytest.fixture(scope="session")
def family_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {p: make_family_model_dir(build_model(p, seed=3), root / f"model-{p}") for p in FAMILY_PRESETS}


@pytest.fixture(scope="session")
def family_artifacts(tmp_path_factory, family_dirs):
    root = tmp_path_factory.mktemp("family-artifacts")
    cache: dict[tuple[str, str], Path] = {}

    def get(backend: str, preset: str) -> Path:
        if (backend, preset) not in cache:
            out = root / f"{backend}-{preset}"
            get_exporter(backend).export(family_dirs[preset], out, max_context=FAMILY_MAX_CTX, progress=False)
            cache[(backend, preset)] = out
        return cache[(backend, preset)]

    return get
