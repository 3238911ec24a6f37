"""Exported artifacts run in the runtimes' own stock LLM runners, exactly like Hugging Face.

ExecuTorch: ``executorch.extension.llm.runner.TextLLMRunner`` of the pinned wheel (the C++
``text_llm_runner`` that Android's ``LlmModule`` wraps) loads
``model.pte`` + ``model.ptd`` + ``tokenizer.json`` of an artifact, reads the runner metadata the
export writes, and greedy-decodes the same text as transformers' ``generate`` -- for the base
artifact and for one swapped with a signed merged bundle -- stopping at ``</s>`` where transformers
does. An artifact with run-time adapter slots runs the base model in it, and takes a lora bundle
in place through ``set_adapter`` in ``executorch.runtime``.

The test models are the shared ``model_dirs`` with their ``lm_head`` rows edited: every token that
is not a printable ASCII byte gets a zero row (its logit is 0, below the winning logit), and ``</s>``
gets 1.2 times the row of ``e``, so greedy decoding ends with ``</s>`` after a few tokens on some
prompts and runs to the token limit on others. The binding hands each generated token to the
Python callback as a ``str``, so a byte-level model must not emit a lone byte of a multi-byte UTF-8
character (that raises ``UnicodeDecodeError`` in the binding); printable ASCII never does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import og_greedy

MAX_NEW = 16
EOS_FACTOR = 1.2
PROMPTS = ("Hello, world", "Once upon a time", "abc", "Tell me a story", "Good morning", "x = y +")
PRESETS = ("tiny-llama", "tiny-gemma")
# the stock ExecuTorch runner on an edited copy of the model (one export of its own): tiny-llama; the
# Gemma families run through the same runner in test_families (gemma2, gemma3)
STOCK_ET_PRESETS = ("tiny-llama",)
# index of </s> in the greedy continuation of each prompt (-1: runs to MAX_NEW), base and swapped
EOS_AT = {"tiny-llama": ([-1, 6, -1, -1, 8, 7], [-1, -1, 9, -1, 11, 2])}


def _ascii_eos_model(src: Path, out: Path) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    printable = {tok(chr(c), add_special_tokens=False).input_ids[0] for c in range(32, 127)}
    e = tok("e", add_special_tokens=False).input_ids[0]
    with torch.no_grad():
        w = model.lm_head.weight  # tiny-gemma: tied to the embedding, edited together
        keep = torch.zeros(w.shape[0], dtype=torch.bool)
        keep[sorted(printable)] = True
        w[~keep] = 0.0
        w[tok.eos_token_id] = w[e] * EOS_FACTOR
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def et_stock(model_dirs, tmp_path_factory):
    """preset -> (model dir, ExecuTorch artifact), exported once per preset for this module."""
    from loragen_mobile.exporters import get_exporter

    root = tmp_path_factory.mktemp("stock-et")
    cache: dict[str, tuple[Path, Path]] = {}

    def get(preset: str) -> tuple[Path, Path]:
        if preset not in cache:
            md = _ascii_eos_model(model_dirs[preset], root / f"model-{preset}")
            art = root / f"et-{preset}"
            get_exporter("executorch").export(md, art, max_context=64, progress=False)
            cache[preset] = (md, art)
        return cache[preset]

    return get


def _hf_greedy(model, tok, prompt: str) -> list[int]:
    """transformers' greedy ``generate`` (stops after the model's EOS): the new token ids."""
    ids = tok(prompt, return_tensors="pt").input_ids
    return model.generate(ids, max_new_tokens=MAX_NEW, do_sample=False)[0, ids.shape[1]:].tolist()


def _stock_et(art: Path):
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    runner = TextLLMRunner(str(art / "model.pte"), str(art / "tokenizer.json"), str(art / "model.ptd"))

    def run(prompt: str) -> list[str]:
        pieces = []
        runner.reset()  # the runner keeps its position across calls (multi-turn); one prompt each
        # num_bos=1: transformers' tokenizer puts <s> first (its post-processor); the runner's
        # tokenizer.json encode adds only what the config asks for
        cfg = GenerationConfig(echo=False, max_new_tokens=MAX_NEW, temperature=0.0, num_bos=1)
        runner.generate(prompt, cfg, token_callback=pieces.append)
        return pieces

    return run


def _check_against_hf(run, model, tok) -> list[int]:
    """Every prompt: the runner emits transformers' tokens, one text piece per token, and stops where
    transformers stops (after ``</s>``, whose piece it also emits). Returns each prompt's EOS index (-1: none)."""
    eos_at = []
    for p in PROMPTS:
        ids = _hf_greedy(model, tok, p)
        got = run(p)
        assert got == [tok.decode([t]) for t in ids], (p, got, ids)
        eos = ids.index(tok.eos_token_id) if tok.eos_token_id in ids else -1
        assert eos in (-1, len(ids) - 1) and (eos >= 0 or len(ids) == MAX_NEW)
        eos_at.append(eos)
    return eos_at


@pytest.mark.parametrize("preset", STOCK_ET_PRESETS)
def test_executorch_stock_runner_base_and_swapped(preset, et_stock, tmp_path):
    from conftest import swap_with_signed_bundle
    from transformers import AutoModelForCausalLM, AutoTokenizer

    md, art = et_stock(preset)
    tok = AutoTokenizer.from_pretrained(md)
    base = AutoModelForCausalLM.from_pretrained(md, dtype=torch.float32).eval()

    # both endings: </s> after a few tokens (the runner stops right after it), and the token limit
    assert _check_against_hf(_stock_et(art), base, tok) == EOS_AT[preset][0]

    # a random PEFT adapter -> signed merged bundle -> swapped artifact (no re-export)
    swapped, merged = swap_with_signed_bundle(art, md, tmp_path)
    assert _check_against_hf(_stock_et(swapped), merged, tok) == EOS_AT[preset][1]
    # the swap changed the output
    assert [_hf_greedy(merged, tok, p) for p in PROMPTS] != [_hf_greedy(base, tok, p) for p in PROMPTS]


def test_executorch_runner_metadata(et_stock):
    """The constant methods the stock runner reads, from the model's own config and tokenizer."""
    from executorch.runtime import Runtime

    md, art = et_stock("tiny-llama")
    prog = Runtime.get().load_program(str(art / "model.pte"), data_path=str(art / "model.ptd"))
    got = {m: prog.load_method(m).execute([]) for m in
           ("get_max_seq_len", "get_max_context_len", "get_bos_id", "get_eos_ids", "get_vocab_size",
            "use_kv_cache", "enable_dynamic_shape")}
    assert got == {"get_max_seq_len": [64], "get_max_context_len": [64], "get_bos_id": [1], "get_eos_ids": [2],
                   "get_vocab_size": [260], "use_kv_cache": [True], "enable_dynamic_shape": [True]}
    assert sorted(prog.method_names) == sorted([*got, "forward"])


# ------------------------------------------------------------------------------ onnxruntime-genai
# og's standard flow on an artifact directory: its own Tokenizer renders the chat template that the
# export wrote into tokenizer_config.json, encodes the text (the template's "<s>" is the BOS id),
# then its Generator decodes greedily until the artifact's EOS. Everything must equal Hugging
# Face reading the same files: apply_chat_template + generate.

OG_MAX_NEW = 12
OG_MESSAGES = (
    [{"role": "user", "content": "Hello, wo"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Once upon a time"}],
    [{"role": "user", "content": "x = y + 2"}],
)


def _og_flow(art: Path, messages: list[dict], max_new: int) -> tuple[str, list[int], list[int], str]:
    """onnxruntime-genai alone: (rendered prompt, prompt ids, new ids, decoded new text)."""
    import json

    import onnxruntime_genai as og

    model = og.Model(str(art))
    tok = og.Tokenizer(model)
    text = tok.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
    ids = [int(i) for i in tok.encode(text)]
    new = og_greedy(art, ids, max_new)
    return text, ids, new, tok.decode(new)


def _hf_flow(model, art: Path, messages: list[dict], max_new: int) -> tuple[str, list[int], list[int], str]:
    """Hugging Face on the artifact's tokenizer files: apply_chat_template, then greedy generate."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(art))
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))
    out = model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
    return text, ids, out, tok.decode(out, skip_special_tokens=True)


def _check_og_equals_hf(art: Path, model, model_dir: Path, max_new: int = OG_MAX_NEW) -> list[list[int]]:
    from loragen_mobile.models import load_tokenizer
    from loragen_mobile.training import prompt_ids

    train_tok = load_tokenizer(model_dir)
    news = []
    for msgs in OG_MESSAGES:
        og_res, hf_res = _og_flow(art, msgs, max_new), _hf_flow(model, art, msgs, max_new)
        assert og_res[:3] == hf_res[:3], (msgs, og_res, hf_res)
        if "\ufffd" not in hf_res[3]:  # random weights emit stray UTF-8 bytes; each library shows them its way
            assert og_res[3] == hf_res[3]
        system = msgs[0]["content"] if msgs[0]["role"] == "system" else None
        # the ids the model was trained with: [BOS] (system "\n") input "\n"
        assert og_res[1] == prompt_ids(train_tok, system, msgs[-1]["content"])
        assert og_res[1][0] == 1 and og_res[0].startswith("<s>") and og_res[0].endswith("\n")
        news.append(og_res[2])
    return news


@pytest.mark.parametrize("preset", PRESETS)
def test_onnxruntime_genai_standard_flow_equals_hf(preset, artifacts, model_dirs, tmp_path):
    import onnxruntime_genai as og
    from conftest import swap_with_signed_bundle
    from transformers import AutoTokenizer

    from loragen_mobile.models import load_model

    art, md = artifacts("onnx", preset), model_dirs[preset]
    base = load_model(md, dtype=torch.float32)
    base_new = _check_og_equals_hf(art, base, md)
    assert all(len(n) == OG_MAX_NEW for n in base_new)  # random weights: no EOS within the limit

    # og's encode of plain text with special tokens on: HF's ids, BOS first (the post-processor)
    tok = og.Tokenizer(og.Model(str(art)))
    tok.update_options(add_special_tokens="true")
    hf = AutoTokenizer.from_pretrained(str(art))
    for text in ("Hi", "héllo wörld\n", "</s> x"):
        assert [int(i) for i in tok.encode(text)] == hf(text)["input_ids"]
        assert hf(text)["input_ids"][0] == 1

    # swapped with a signed merged bundle: og on the new directory equals the PEFT-merged model
    swapped, merged = swap_with_signed_bundle(art, md, tmp_path)
    swapped_new = _check_og_equals_hf(swapped, merged, md)
    assert swapped_new != base_new  # the bundle changed the answers


def test_onnxruntime_genai_swaps_a_bundle_into_a_loaded_model(artifacts, model_dirs, tmp_path, capsys):
    """og's own adapter API swaps a signed merged bundle (written by `loragen bundle onnx-adapter`)
    into one loaded og.Model: its greedy tokens equal the PEFT-merged model's with the adapter
    active, the base model's without (a lora bundle goes through the host merge that
    test_bundle_swap checks). An artifact whose slots are no graph inputs is refused, nothing written."""
    kind = "merged"
    import onnxruntime_genai as og
    from peft import PeftModel

    from loragen_mobile import lora
    from loragen_mobile.bundle import build_bundle, write_bundle
    from loragen_mobile.bundle.keys import generate_keypair, load_private_key
    from loragen_mobile.cli import main
    from loragen_mobile.models import load_model, target_module_names

    art, md = artifacts("onnx", "tiny-llama"), model_dirs["tiny-llama"]
    base = load_model(md, dtype=torch.float32)
    ad = lora.random_adapter(base, target_module_names(base), r=8, alpha=16, seed=21, std=0.15)
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    write_bundle(build_bundle(art, ad, kind, private_key=load_private_key(tmp_path / "k.pem")), tmp_path / "b.bundle")
    out = tmp_path / "task.onnx_adapter"
    assert main(["bundle", "onnx-adapter", str(tmp_path / "b.bundle"), "--artifact", str(art), "--pubkey",
                 str(tmp_path / "k.pub"), "--out", str(out)]) == 0
    lora.save_peft_adapter(ad, tmp_path / "adapter")
    merged = PeftModel.from_pretrained(load_model(md, dtype=torch.float32), str(tmp_path / "adapter")).merge_and_unload()

    model = og.Model(str(art))
    adapters = og.Adapters(model)
    adapters.load(str(out), "task")

    def og_tokens(ids, active):
        return og_greedy(art, ids, OG_MAX_NEW, model=model, adapters=adapters, adapter="task" if active else None)

    def hf_tokens(m, ids):  # og stops after EOS (2, genai_config.json): so does transformers here
        return m.generate(torch.tensor([ids]), max_new_tokens=OG_MAX_NEW, do_sample=False, eos_token_id=2,
                          pad_token_id=0)[0, len(ids):].tolist()

    for ids in ([1, 84, 114, 97, 110, 115], [1, 5, 9, 13, 200, 31]):
        swapped, plain = og_tokens(ids, True), og_tokens(ids, False)
        assert swapped == hf_tokens(merged, ids) and plain == hf_tokens(base, ids) and swapped != plain, ids
    et = artifacts("executorch", "tiny-llama")
    capsys.readouterr()
    assert main(["bundle", "onnx-adapter", str(tmp_path / "b.bundle"), "--artifact", str(et), "--pubkey",
                 str(tmp_path / "k.pub"), "--out", str(tmp_path / "x.onnx_adapter")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: backend:" in err[0] and not (tmp_path / "x.onnx_adapter").exists()


def test_onnx_adapter_slots_swap_a_lora_bundle_into_a_loaded_session(model_dirs, tmp_path, capsys):
    """An ONNX artifact exported with run-time adapter slots: one loaded session takes a signed lora
    bundle as slot inputs (our runner: ``set_adapter``; onnxruntime-genai: the bundle written as an
    adapter file of the slot inputs, ``og.Adapters``) and gives the PEFT-merged model's logits and
    greedy tokens, the base model's without it; the adapter file holds the factors only, not merged
    weights; what does not fit is refused."""
    import onnxruntime_genai as og
    from conftest import random_merged_adapter, signed_bundle

    from loragen_mobile import lora
    from loragen_mobile.bundle import bundle_adapter, open_runner_with_bundle, verify_bundle
    from loragen_mobile.cli import main
    from loragen_mobile.errors import LoragenError
    from loragen_mobile.exporters import get_exporter
    from loragen_mobile.models import load_model

    md = model_dirs["tiny-llama"]
    exp = get_exporter("onnx")
    art = exp.export(md, tmp_path / "onnx-slots", max_context=64, adapter_slots=16, progress=False)
    slots = art.meta["adapter_slots"]
    assert slots["rank"] == 16 and "method" not in slots
    assert slots["modules"] == [s["name"][: -len(".weight")] for s in art.meta["swap_slots"]]
    assert slots["input_names"] == [f"{m}.lora_slot_{x}" for m in slots["modules"] for x in "AB"]
    base = load_model(md, dtype=torch.float32).eval()
    ad, merged = random_merged_adapter(md, tmp_path)
    raw, pub = signed_bundle(art, ad, "lora", tmp_path)
    ids = [1, 84, 114, 97, 110, 115]
    with torch.no_grad():
        want, was = (m(torch.tensor([ids])).logits[0, -1] for m in (merged, base))
    runner = exp.open_runner(art)
    assert (runner.prefill(ids) - was).abs().max() <= 1e-4
    runner.set_adapter(bundle_adapter(verify_bundle(raw, art, pub)))
    assert (runner.prefill(ids) - want).abs().max() <= 1e-4 < (want - was).abs().max()

    def hf_tokens(m, ids):  # og stops after EOS (2, genai_config.json): so does transformers here
        return m.generate(torch.tensor([ids]), max_new_tokens=OG_MAX_NEW, do_sample=False, eos_token_id=2,
                          pad_token_id=0)[0, len(ids):].tolist()

    prompts = ([1, 84, 114, 97, 110, 115], [1, 5, 9, 13, 200, 31])
    want_tokens, base_tokens = [hf_tokens(merged, i) for i in prompts], [hf_tokens(base, i) for i in prompts]
    assert [runner.generate(i, OG_MAX_NEW) for i in prompts] == want_tokens
    runner.set_adapter(None)
    assert [runner.generate(i, OG_MAX_NEW) for i in prompts] == base_tokens != want_tokens
    assert open_runner_with_bundle(raw, art, pub).generate(prompts[0], OG_MAX_NEW) == want_tokens[0]
    with pytest.raises(LoragenError) as e:
        runner.set_adapter(lora.random_adapter(base, slots["modules"], r=32, alpha=32))
    assert e.value.code == "input"

    # onnxruntime-genai's own flow: the lora bundle as an adapter file of the slot inputs
    (tmp_path / "b.bundle").write_bytes(raw)
    out = tmp_path / "task.onnx_adapter"
    assert main(["bundle", "onnx-adapter", str(tmp_path / "b.bundle"), "--artifact", str(art.path), "--pubkey",
                 str(tmp_path / "k.pub"), "--out", str(out)]) == 0
    factors = sum(4 * 16 * (o + i) for o, i in slots["shapes"])  # fp32 A and B of every module
    weights = sum(s["nbytes"] for s in art.meta["swap_slots"])
    assert factors <= out.stat().st_size < factors + 64 * 1024 < weights
    model = og.Model(str(art.path))
    adapters = og.Adapters(model)
    adapters.load(str(out), "task")
    for i, w, b in zip(prompts, want_tokens, base_tokens):
        assert og_greedy(art.path, i, OG_MAX_NEW, model=model, adapters=adapters, adapter="task") == w
        assert og_greedy(art.path, i, OG_MAX_NEW, model=model) == b


def test_onnxruntime_genai_standard_flow_stops_at_eos(edge_artifacts):
    """The shipped trained edge model: og's flow gives HF's answers and ends with </s> like HF."""
    from conftest import EDGE_ASSET

    from loragen_mobile.models import load_model, load_tokenizer

    def model_text(ids):
        return load_tokenizer(EDGE_ASSET).decode(ids, skip_special_tokens=True)

    art = edge_artifacts("onnx")
    model = load_model(EDGE_ASSET, dtype=torch.float32)
    news = _check_og_equals_hf(art, model, EDGE_ASSET, max_new=40)
    assert all("\ufffd" not in model_text(n) for n in news)  # so the decoded texts were compared too
    for new in news:
        assert new[-1] == 2 and len(new) < 40, new  # stopped at EOS, before the limit


def test_runtime_pins_agree():
    """The exporter's executorch pin, the Android catalog and the iOS Swift package move together
    (ExecuTorch promises no forward compatibility); onnxruntime-android stays in pyproject's range."""
    import re
    import tomllib

    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parent.parent
    deps = {(r := Requirement(d)).name: r for d in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]}
    (pin,) = [s.version for s in deps["executorch"].specifier if s.operator == "=="]
    catalog = tomllib.loads((root / "android_demo/gradle/libs.versions.toml").read_text())
    assert catalog["versions"]["executorch"] == pin
    assert catalog["libraries"]["executorch-android"] == {"module": "org.pytorch:executorch-android",
                                                          "version": {"ref": "executorch"}}
    assert catalog["versions"]["onnxruntime"] in deps["onnxruntime"].specifier
    app = (root / "android_demo/app/build.gradle.kts").read_text()
    assert "implementation(libs.executorch.android)" in app and "implementation(libs.onnxruntime.android)" in app
    assert not re.search(r'"org\.pytorch:executorch-android:|"com\.microsoft\.onnxruntime:onnxruntime-android:', app)
    project = (root / "ios_demo/project.yml").read_text()
    assert re.findall(r"^\s+branch: swiftpm-(\S+)\s*$", project, re.M) == [pin]


def test_executorch_adapter_slots_swap_a_lora_bundle_in_place(et_stock, tmp_path):
    """An artifact exported with run-time adapter slots: the stock runner (``forward`` only) gives the
    base model's tokens; our runner, on one loaded program, takes a signed lora bundle through
    ``set_adapter`` and gives the PEFT-merged model's logits and tokens, keeps it across a reset,
    and drops it again; what does not fit is refused."""
    from conftest import random_merged_adapter, signed_bundle
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from loragen_mobile import lora
    from loragen_mobile.bundle import BundleError, bundle_adapter, open_runner_with_bundle, verify_bundle
    from loragen_mobile.errors import LoragenError
    from loragen_mobile.exporters import get_exporter

    md, plain = et_stock("tiny-llama")
    exp = get_exporter("executorch")
    art = exp.export(md, tmp_path / "et-slots", max_context=64, adapter_slots=16, progress=False)
    slots = art.meta["adapter_slots"]
    assert slots["method"] == "set_adapter" and slots["rank"] == 16
    assert slots["modules"] == [s["name"][: -len(".weight")] for s in art.meta["swap_slots"]]
    tok = AutoTokenizer.from_pretrained(md)
    base = AutoModelForCausalLM.from_pretrained(md, dtype=torch.float32).eval()
    assert _check_against_hf(_stock_et(art.path), base, tok) == EOS_AT["tiny-llama"][0]

    ad, merged = random_merged_adapter(md, tmp_path)
    raw, pub = signed_bundle(art, ad, "lora", tmp_path)
    runner = exp.open_runner(art)
    ids = tok(PROMPTS[1]).input_ids
    with torch.no_grad():
        want, was = (m(torch.tensor([ids])).logits[0, -1] for m in (merged, base))
    assert (runner.prefill(ids) - was).abs().max() <= 1e-4
    runner.set_adapter(bundle_adapter(verify_bundle(raw, art, pub)))
    assert (runner.prefill(ids) - want).abs().max() <= 1e-4 < (want - was).abs().max()

    def greedy(p):  # up to and including the EOS, as transformers stops
        return runner.generate(tok(p).input_ids, MAX_NEW)

    assert [greedy(p) for p in PROMPTS] == [_hf_greedy(merged, tok, p) for p in PROMPTS]
    runner.reset()
    assert greedy(PROMPTS[2]) == _hf_greedy(merged, tok, PROMPTS[2])
    runner.set_adapter(None)
    assert [greedy(p) for p in PROMPTS] == [_hf_greedy(base, tok, p) for p in PROMPTS]
    # `loragen run --bundle`'s runner: the lora bundle goes to the slots
    assert open_runner_with_bundle(raw, art, pub).generate(ids, MAX_NEW) == _hf_greedy(merged, tok, PROMPTS[1])

    wide = lora.random_adapter(base, slots["modules"], r=32, alpha=32)
    for bad, code in ((wide, "input"), (lora.LoraAdapter({"lm_head": ad.factors[slots["modules"][0]]}, r=8, alpha=8),
                                          "input")):
        with pytest.raises(LoragenError) as e:
            runner.set_adapter(bad)
        assert e.value.code == code
    (tmp_path / "m").mkdir()
    mraw, mpub = signed_bundle(art, ad, "merged", tmp_path / "m")
    with pytest.raises(BundleError) as e:
        bundle_adapter(verify_bundle(mraw, art, mpub))
    assert e.value.code == "usage"
    with pytest.raises(LoragenError) as e:
        exp.open_runner(plain).set_adapter(ad)
    assert e.value.code == "usage"
    for backend, kw in (("coreml", {}), ("onnx", {"quantize": "int4-b32"}), ("executorch", {"quantize": "8da4w-g32"})):
        with pytest.raises(LoragenError) as e:
            get_exporter(backend).export(md, tmp_path / "refused", adapter_slots=16, progress=False, **kw)
        assert e.value.code == "usage" and not (tmp_path / "refused").exists()
    # a damaged adapter_slots block in artifact.json: one clear error when the artifact is read
    import json
    import shutil

    from loragen_mobile.exporters import read_artifact

    bad = tmp_path / "et-slots-bad"
    shutil.copytree(art.path, bad)
    good = json.loads((art.path / "artifact.json").read_text())
    for change in ({"shapes": None}, {"shapes": slots["shapes"][1:]}, {"shapes": [[0, 64]] + slots["shapes"][1:]},
                   {"rank": 0}, {"rank": "16"}, {"modules": None}, {"method": 3}):
        meta = {**good, "adapter_slots": {**slots, **change}}
        if change == {"shapes": None}:
            del meta["adapter_slots"]["shapes"]
        (bad / "artifact.json").write_text(json.dumps(meta))
        with pytest.raises(LoragenError, match="adapter_slots must hold") as e:
            read_artifact(bad)
        assert e.value.code == "input"
    assert read_artifact(art.path).meta["adapter_slots"] == slots
