"""LoRA container, PEFT adapter directories and the exact merge (parity with PEFT)."""

import copy
import hashlib
import json
import math

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file

from loragen_mobile import lora, models
from loragen_mobile.cli import main
from loragen_mobile.errors import LoragenError


def _tree_digest(path):
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.mark.parametrize("preset", ["tiny-llama", "tiny-gemma"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_merge_parity_with_peft(tmp_path, preset, dtype):
    base = models.build_model(preset, seed=0, dtype=dtype)
    adapter = lora.random_adapter(base, models.target_module_names(base), r=8, alpha=16, seed=1, std=0.1, dtype=dtype)
    lora.save_peft_adapter(adapter, tmp_path / "ad")
    loaded = lora.load_peft_adapter(tmp_path / "ad")
    ours = lora.merge_into_model(copy.deepcopy(base), loaded)
    peft_model = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "ad"))
    ids = torch.tensor([[1, 40, 77, 120, 9, 33, 250, 18, 64, 5]])
    with torch.no_grad():
        peft_logits = peft_model(ids).logits.float()
        our_logits = ours(ids).logits.float()
    merged = peft_model.merge_and_unload().state_dict()
    ours_sd = ours.state_dict()
    wdiff = max((merged[k].float() - ours_sd[k].float()).abs().max().item() for k in ours_sd)
    if dtype == torch.float32:
        assert wdiff <= 1e-6
        assert (peft_logits - our_logits).abs().max().item() <= 1e-5
    else:
        # one rounding of the same sum (PEFT accumulates in fp32, we in fp64): where the two sums round
        # differently the weights are one ulp apart, and ulp(x) <= eps * |x|
        eps, tiny = torch.finfo(dtype).eps, torch.finfo(dtype).tiny
        for k in ours_sd:
            a, b = merged[k].float(), ours_sd[k].float()
            assert ((a - b).abs() <= eps * a.abs().clamp_min(tiny)).all(), k
        # unmerged PEFT computes in half precision along another path: a few half-precision ulps
        assert (peft_logits - our_logits).abs().max().item() <= 0.05


def test_merge_is_w_plus_scale_b_a():
    base = models.build_model("tiny-llama")
    names = models.target_module_names(base)
    adapter = lora.random_adapter(base, names, r=4, alpha=12, seed=3)
    w0 = {f"{n}.weight": base.get_submodule(n).weight.detach().clone() for n in names}
    new = lora.merged_tensors(w0, adapter)
    assert set(new) == set(w0)
    for n in names:
        a, b = adapter.factors[n]
        want = w0[f"{n}.weight"].double() + 3.0 * (b.double() @ a.double())
        assert (new[f"{n}.weight"].double() - want).abs().max().item() < 1e-6


def test_adapter_round_trip_exact(tmp_path):
    base = models.build_model("tiny-gemma")
    ad = lora.random_adapter(base, models.target_module_names(base, ("q_proj", "v_proj")), r=4, alpha=8)
    ad.metadata["loragen.task_sha256"] = "ab" * 32
    lora.save_peft_adapter(ad, tmp_path / "ad")
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 8
    assert sorted(cfg["target_modules"]) == ["q_proj", "v_proj"]
    back = lora.load_peft_adapter(tmp_path / "ad")
    assert back.r == 4 and back.alpha == 8 and back.model_type == "gemma"
    assert back.metadata == {"loragen.task_sha256": "ab" * 32}
    assert back.factors.keys() == ad.factors.keys()
    for k, (a, b) in ad.factors.items():
        assert torch.equal(a, back.factors[k][0]) and torch.equal(b, back.factors[k][1])


def _setup(tmp_path, preset_dirs, preset="tiny-llama"):
    model = models.load_model(preset_dirs[preset])
    ad = lora.random_adapter(model, models.target_module_names(model), r=8, alpha=16, seed=2, std=0.05)
    lora.save_peft_adapter(ad, tmp_path / "ad")
    return model, ad


def test_merge_cli_writes_a_loadable_merged_dir(tmp_path, preset_dirs):
    model, ad = _setup(tmp_path, preset_dirs)
    rc = main(["merge", "--model", str(preset_dirs["tiny-llama"]), "--adapter", str(tmp_path / "ad"),
               "--out", str(tmp_path / "merged")])
    assert rc == 0
    merged = models.load_model(tmp_path / "merged")
    want = lora.merge_into_model(model, ad)
    ids = torch.tensor([[1, 50, 60, 70]])
    with torch.no_grad():
        assert torch.equal(merged(ids).logits, want(ids).logits)
    assert (tmp_path / "merged" / "tokenizer.json").is_file()


def _expect_cli_error(capsys, argv, message):
    assert main(argv) == 2
    lines = [ln for ln in capsys.readouterr().err.replace("\r", "\n").splitlines() if ln.startswith("loragen")]
    assert len(lines) == 1 and lines[0].startswith("loragen: error: "), lines
    err = lines[0]
    assert message in err, err


def test_merge_bad_input_leaves_files_untouched(tmp_path, preset_dirs, capsys):
    _setup(tmp_path, preset_dirs)
    base = str(preset_dirs["tiny-llama"])
    before_base = _tree_digest(preset_dirs["tiny-llama"])
    out = str(tmp_path / "out")
    # missing directories
    _expect_cli_error(capsys, ["merge", "--model", str(tmp_path / "nope"), "--adapter", str(tmp_path / "ad"), "--out", out],
                      "does not exist")
    _expect_cli_error(capsys, ["merge", "--model", base, "--adapter", str(tmp_path / "nope"), "--out", out],
                      "adapter directory")
    # wrong architecture: a llama adapter onto gemma
    _expect_cli_error(capsys, ["merge", "--model", str(preset_dirs["tiny-gemma"]), "--adapter", str(tmp_path / "ad"), "--out", out],
                      "made for model_type 'llama', the model is 'gemma'")
    # wrong shapes: transpose one A
    bad = tmp_path / "ad_shape"
    bad.mkdir()
    (bad / "adapter_config.json").write_bytes((tmp_path / "ad" / "adapter_config.json").read_bytes())
    t = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.1.mlp.up_proj.lora_A.weight"
    t[key] = torch.zeros(8, 256)
    save_file(t, str(bad / "adapter_model.safetensors"))
    _expect_cli_error(capsys, ["merge", "--model", base, "--adapter", str(bad), "--out", out],
                      "shape mismatch for model.layers.1.mlp.up_proj.weight: model weight (256, 128), adapter B @ A (256, 256)")
    # NaN in the adapter
    nan = tmp_path / "ad_nan"
    nan.mkdir()
    (nan / "adapter_config.json").write_bytes((tmp_path / "ad" / "adapter_config.json").read_bytes())
    t = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    t["base_model.model.model.layers.2.mlp.down_proj.lora_B.weight"][3, 1] = math.nan
    save_file(t, str(nan / "adapter_model.safetensors"))
    _expect_cli_error(capsys, ["merge", "--model", base, "--adapter", str(nan), "--out", out],
                      "merge of model.layers.2.mlp.down_proj.weight produced NaN or Inf")
    # corrupt safetensors
    broken = tmp_path / "ad_broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_bytes((tmp_path / "ad" / "adapter_config.json").read_bytes())
    (broken / "adapter_model.safetensors").write_bytes(b"\xff" * 20)
    _expect_cli_error(capsys, ["merge", "--model", base, "--adapter", str(broken), "--out", out],
                      "not a valid safetensors file")
    # existing output is never overwritten
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep").write_text("mine")
    _expect_cli_error(capsys, ["merge", "--model", base, "--adapter", str(tmp_path / "ad"), "--out", str(tmp_path / "taken")],
                      "already exists")
    assert (tmp_path / "taken" / "keep").read_text() == "mine"
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert _tree_digest(preset_dirs["tiny-llama"]) == before_base


def test_adapter_rank_mismatch_is_rejected():
    with pytest.raises(LoragenError, match="do not have rank 4"):
        lora.LoraAdapter({"m": (torch.zeros(3, 8), torch.zeros(8, 3))}, r=4, alpha=4)


def _adapter_variant(tmp_path, name, edit_tensors=None, edit_config=None):
    d = tmp_path / name
    d.mkdir()
    cfg = json.loads((tmp_path / "ad" / "adapter_config.json").read_text())
    if edit_config:
        edit_config(cfg)
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    t = load_file(str(tmp_path / "ad" / "adapter_model.safetensors"))
    if edit_tensors:
        t = edit_tensors(t)
    save_file(t, str(d / "adapter_model.safetensors"))
    return d


def test_merge_refuses_unusable_adapters(tmp_path, preset_dirs, capsys):
    """No tensors, integer factors, a NaN/Inf/non-integer r or alpha, or merged weights beyond
    +-65504: one line with a code, nothing written."""
    _setup(tmp_path, preset_dirs)
    base = str(preset_dirs["tiny-llama"])
    out = tmp_path / "out"
    cases = [
        (_adapter_variant(tmp_path, "empty", edit_tensors=lambda t: {}), "adapter: ", "holds no LoRA tensors"),
        (_adapter_variant(tmp_path, "int32", edit_tensors=lambda t: {k: v.to(torch.int32) for k, v in t.items()}),
         "adapter: ", "must be floating point"),
        (_adapter_variant(tmp_path, "nan-alpha", edit_config=lambda c: c.update(lora_alpha=math.nan)), "adapter: ",
         "finite number"),
        (_adapter_variant(tmp_path, "inf-alpha", edit_config=lambda c: c.update(lora_alpha=math.inf)), "adapter: ",
         "finite number"),
        (_adapter_variant(tmp_path, "float-r", edit_config=lambda c: c.update(r=8.5)), "adapter: ", "positive integer"),
        (_adapter_variant(tmp_path, "huge", edit_tensors=lambda t: {k: v * 3000 for k, v in t.items()}), "merge: ",
         "beyond +-65504"),
    ]
    for d, code, msg in cases:
        assert main(["merge", "--model", base, "--adapter", str(d), "--out", str(out)]) == 2
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("loragen")]
        assert len(lines) == 1 and lines[0].startswith("loragen: error: " + code) and msg in lines[0], (d.name, lines)
        assert not out.exists()


def test_nan_alpha_never_merges():
    """addmm with alpha=NaN would merge as if the scale were 1: the adapter refuses it first."""
    with pytest.raises(LoragenError) as e:
        lora.LoraAdapter({"m": (torch.zeros(4, 8), torch.zeros(8, 4))}, r=4, alpha=math.nan)
    assert e.value.code == "adapter"
    with pytest.raises(LoragenError) as e:
        lora.merged_tensors({"m.weight": torch.full((8, 8), 62000.0)},
                            lora.LoraAdapter({"m": (torch.ones(4, 8), torch.ones(8, 4))}, r=4, alpha=4096.0))
    assert e.value.code == "merge"
