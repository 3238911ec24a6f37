"""The LoRA-Gen generator: routing, the exact rank-K*r form, gradients, BatchNorm at inference,
generation to PEFT adapters, exact resume after SIGKILL, and torchrun (2 processes, gloo)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from loragen_mobile.errors import LoragenError
from loragen_mobile.generator import (batched_lora, build_generator, generate_adapter, generate_adapters,
                                      generate_factors, keep_top_k, load_config, load_generator)
from loragen_mobile.generator.model import cv_squared, dense_mixture
from loragen_mobile.generator.store import task_sha256
from loragen_mobile.generator.train import LENGTH_GROUPS, edge_ce_sum

from conftest import GEN_OVERRIDES

ROOT = Path(__file__).parent.parent
TINY = ROOT / "configs" / "tiny.yaml"
TASKS = ["Task: reverse the word.", "Tools:\n- dial: dials a number. Call: dial(who=\"...\")\n", "Rule: double each letter. Examples:"]


def _cfg(**kw):
    return load_config(TINY, {**GEN_OVERRIDES, **kw})


def _desc(g, texts):
    from loragen_mobile.training import encode, left_pad

    return left_pad([[g.cloud_tokenizer.bos_token_id] + encode(g.cloud_tokenizer, t) for t in texts],
                    g.cloud_tokenizer.pad_token_id)


@pytest.fixture(scope="module")
def fresh(preset_dirs):
    torch.manual_seed(0)
    g = build_generator(_cfg(), preset_dirs["tiny-llama"])
    with torch.no_grad():  # non-zero B so that every factor matters
        for p in g.generator.experts_b.values():
            p.normal_(0, 0.05)
    return g


def test_keep_top_k_renormalises_and_zeroes_the_rest():
    logits = torch.tensor([[0.3, 2.0, -1.0, 1.5], [4.0, 0.0, 0.0, 0.0]])
    gates, idx = keep_top_k(logits, 2)
    p = logits.softmax(-1)
    assert idx.tolist() == [[1, 3], [0, 1]] or idx.tolist() == [[1, 3], [0, 2]]
    assert torch.allclose(gates.sum(-1), torch.ones(2))
    assert (gates > 0).sum(-1).tolist() == [2, 2]
    assert torch.allclose(gates[0, 1] / gates[0, 3], p[0, 1] / p[0, 3])


def test_cv_squared_is_zero_for_balanced_and_positive_for_collapsed_routing():
    balanced = torch.full((4, 2, 8), 1 / 8)
    collapsed = torch.zeros(4, 2, 8)
    collapsed[..., 0] = 1.0
    assert float(cv_squared(balanced)) == pytest.approx(0.0, abs=1e-12)
    assert float(cv_squared(collapsed)) == pytest.approx(7.0, rel=1e-6)  # var/mean^2 of (4,0,...,0)


def test_concatenated_rank_k_r_form_equals_the_dense_expert_mixture(fresh):
    g = fresh.generator.eval()
    ids, mask = _desc(fresh, TASKS)
    with torch.no_grad():
        gates, idx, factors = g(ids, mask)
        dense = dense_mixture(g, gates)
    assert idx.shape == (3, fresh.layout.num_layers, fresh.cfg.top_k)
    for m, (a, b) in factors.items():
        assert a.shape[-2] == b.shape[-1] == fresh.cfg.top_k * fresh.cfg.expert_rank
        low_rank = torch.einsum("blor,blri->bloi", b, a)
        assert (low_rank - dense[m]).abs().max().item() < 1e-6
        assert dense[m].abs().max().item() > 1e-3


def test_batchnorm_at_inference_uses_running_statistics(fresh):
    """Eval mode: one description alone gets the gates it gets inside a batch (running stats).
    Train mode: statistics come from the batch, so the same description routes differently."""
    g = fresh.generator
    g.eval()
    ids, mask = _desc(fresh, TASKS)
    with torch.no_grad():
        batch_gates, _ = g.route(ids, mask)
        for k, t in enumerate(TASKS):
            alone, _ = g.route(*_desc(fresh, [t]))
            assert (alone[0] - batch_gates[k]).abs().max().item() < 1e-5
        bn = g.routers[0].bn
        t = g.meta_states(ids, mask).float()[:, 0]
        pre = g.routers[0].f2(torch.nn.functional.silu(g.routers[0].f1(t)))
        expect = (pre - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
        assert (bn(pre) - expect).abs().max().item() < 1e-6
        g.train()
        try:
            pair = g.route(*_desc(fresh, TASKS[:2]))[0]
            with pytest.raises(LoragenError, match="at least 2"):
                g.route(*_desc(fresh, TASKS[:1]))
        finally:
            g.eval()
        assert (pair[0] - batch_gates[0]).abs().max().item() > 1e-4


def test_length_groups_cover_every_index_once_and_split_only_where_padding_costs():
    from loragen_mobile.training import length_groups

    mixed = [40, 300, 35, 310, 50, 290, 45, 305]  # reasoning rules and tool definitions
    groups = length_groups(mixed, 3)
    assert sorted(i for g in groups for i in g) == list(range(len(mixed)))
    assert [sorted(mixed[i] for i in g) for g in groups] == [[35, 40, 45, 50], [290, 300, 305, 310]]
    # similar lengths: one group (a second pass would cost more than the padding it saves)
    assert length_groups([100, 101, 103, 99], 3) == [[3, 0, 1, 2]]
    assert length_groups([7], 3) == [[0]] and length_groups([], 3) == []


def test_shuffle_lists_reorders_only_the_tool_definitions_and_is_a_function_of_the_step():
    from loragen_mobile.data import make_suite
    from loragen_mobile.generator.train import TaskData, shuffle_list_items
    from loragen_mobile.models import build_tokenizer

    text = "Tools:\n- a: x\n- b: y\n- c: z\nThen more.\n- d\n- e"
    orders = set()
    for seed in range(40):
        out = shuffle_list_items(text, torch.Generator().manual_seed(seed))
        lines = out.split("\n")
        assert lines[0] == "Tools:" and lines[4] == "Then more." and len(out) == len(text)
        assert sorted(lines[1:4]) == ["- a: x", "- b: y", "- c: z"] and sorted(lines[5:]) == ["- d", "- e"]
        orders.add((tuple(lines[1:4]), tuple(lines[5:])))
    assert len(orders) == 12  # every order of both lists
    rule = "Rule: double each letter. Examples: ab -> aabb;"
    assert shuffle_list_items(rule, torch.Generator().manual_seed(0)) == rule

    tok = build_tokenizer()
    recs = make_suite("tools", "train", per_task=2)[:8] + make_suite("reasoning", "train", per_task=2)[:4]
    td = TaskData(recs, tok, tok, 300)
    plain, shuffled = _cfg(tasks_per_step=6), _cfg(tasks_per_step=6, shuffle_lists=True)
    moved = 0
    for step in range(6):
        a, b = td.global_batch(step, plain), td.global_batch(step, shuffled)
        assert [(t, ex) for t, ex, _ in a] == [(t, ex) for t, ex, _ in b]  # same tasks and examples
        assert b == td.global_batch(step, shuffled)  # drawn from (seed, step): a resume repeats it
        for (t, _, d), (_, _, e) in zip(a, b):
            assert d == td.tasks[t]["desc"]
            if td.tasks[t]["system"].startswith("Tools:"):
                assert e[0] == d[0] and sorted(e) == sorted(d)
                moved += e != d
            else:
                assert e == d
    assert moved > 0


def test_length_groups_give_the_padded_batchs_loss_and_gradients(preset_dirs):
    """A training step in length groups (descriptions and examples) has the loss and the gradients
    of the same step as one padded batch, up to float rounding."""
    from loragen_mobile.data import make_suite
    from loragen_mobile.generator.train import TaskData

    torch.manual_seed(2)
    cfg = _cfg()
    g = build_generator(cfg, preset_dirs["tiny-llama"])
    with torch.no_grad():
        for n, p in g.generator.named_parameters():
            if "experts_b" in n or "lora_B" in n:
                p.normal_(0, 0.05)
    g.generator.train()
    for m in g.generator.modules():  # the cloud LoRA's dropout off: both runs see the same network
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    recs = make_suite("tools", "train", per_task=3)[:12] + make_suite("reasoning", "train", per_task=3)[:12]
    td = TaskData(recs, g.cloud_tokenizer, g.edge_tokenizer, 300)
    batch = [(t, [0, 1, 2], td.tasks[t]["desc"]) for t in range(len(td.tasks))]  # 4 tool sets and 4 rules
    results = []
    for k in (1, LENGTH_GROUPS):
        desc, mask, groups = td.tensors(batch, k)
        assert len(groups) == 1 if k == 1 else len(groups) > 1
        gates, _, factors = g.generator(desc, mask, groups=k)
        loss = edge_ce_sum(g.edge, g.layout, factors, groups) + cv_squared(gates)
        g.generator.zero_grad()
        loss.backward()
        results.append((float(loss.detach()), {n: p.grad.clone() for n, p in g.generator.named_parameters()
                                      if p.grad is not None}))
    (one, grads_one), (grouped, grads_grouped) = results
    assert grouped == pytest.approx(one, rel=1e-5)
    assert grads_one.keys() == grads_grouped.keys() and len(grads_one) > 20
    for n, gr in grads_one.items():
        assert (grads_grouped[n] - gr).abs().max() <= 1e-4 * gr.abs().max() + 1e-7, n


def test_gradients_reach_generator_parts_but_never_the_edge(preset_dirs):
    from loragen_mobile.generator.train import TaskData
    from loragen_mobile.data import make_suite

    torch.manual_seed(1)
    cfg = _cfg()
    g = build_generator(cfg, preset_dirs["tiny-llama"])
    with torch.no_grad():  # non-zero B factors (LoRA's zero init would zero the A gradients)
        for p in g.generator.experts_b.values():
            p.normal_(0, 0.05)
        for n, p in g.generator.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    edge_before = {k: v.clone() for k, v in g.edge.state_dict().items()}
    td = TaskData(make_suite("tools", "train", per_task=2)[:8], g.cloud_tokenizer, g.edge_tokenizer, 300)
    desc, mask, groups = td.tensors(td.global_batch(0, cfg), LENGTH_GROUPS)
    g.generator.train()
    gates, _, factors = g.generator(desc, mask, groups=LENGTH_GROUPS)
    n = sum(int((labels[:, 1:] != -100).sum()) for _, _, labels in groups)
    (edge_ce_sum(g.edge, g.layout, factors, groups) / n + cfg.alpha_cv * cv_squared(gates)).backward()
    named = dict(g.generator.named_parameters())
    lora_cloud = [k for k in named if "lora_" in k]
    assert len(lora_cloud) == 16  # q_proj and v_proj, A and B, 4 cloud layers
    assert all(named[k].grad is not None and named[k].grad.abs().sum() > 0 for k in lora_cloud)
    for part in ("meta_tokens", "routers.0.f1.weight", "routers.3.f2.weight", "experts_a.up_proj", "experts_b.down_proj"):
        assert named[part].grad is not None and named[part].grad.abs().sum() > 0, part
    frozen_cloud = [p for k, p in named.items() if k.startswith("cloud.") and "lora_" not in k]
    assert frozen_cloud and all(p.grad is None and not p.requires_grad for p in frozen_cloud)
    assert all(p.grad is None and not p.requires_grad for p in g.edge.parameters())
    assert all(torch.equal(v, edge_before[k]) for k, v in g.edge.state_dict().items())


def test_training_never_changes_the_edge_model_files(generator_run, preset_dirs):
    meta = json.loads((generator_run / "generator.json").read_text())
    assert meta["edge"]["path"] == str(Path(preset_dirs["tiny-llama"]).resolve())
    log = [json.loads(x) for x in (generator_run / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [1, 2, 3, 4]
    assert all(e["lm_loss"] > 0 and e["cv_loss"] >= 0 for e in log)
    g = load_generator(generator_run)
    fresh_edge = __import__("loragen_mobile.models", fromlist=["load_model"]).load_model(preset_dirs["tiny-llama"])
    assert all(torch.equal(a, b) for a, b in zip(g.edge.state_dict().values(), fresh_edge.state_dict().values()))


def test_generated_adapter_is_a_standard_peft_adapter_equal_to_the_routed_lora(generator_run, tmp_path):
    from peft import PeftModel

    from loragen_mobile import models
    from loragen_mobile.generator import save_generated

    g = load_generator(generator_run)
    task = TASKS[0]
    adapter = generate_adapter(g, task)
    assert adapter.r == g.cfg.top_k * g.cfg.expert_rank and adapter.scale == 1.0
    assert adapter.metadata == {"loragen.generator_id": g.generator_id, "loragen.task_sha256": task_sha256(task)}
    assert len(adapter.factors) == g.layout.num_layers * len(g.layout.modules)
    out = tmp_path / "adapter"
    save_generated(g, [task], [out], [tmp_path / "merged"])
    peft_model = PeftModel.from_pretrained(models.load_model(g.edge_dir), str(out)).eval()
    merged = models.load_model(tmp_path / "merged")
    ids = torch.tensor([[1] + list(range(40, 70))])
    factors = generate_factors(g, [task])[0]
    stacked = {m: (torch.stack([factors[g.layout.module_name(m, i)][0] for i in range(g.layout.num_layers)])[None],
                   torch.stack([factors[g.layout.module_name(m, i)][1] for i in range(g.layout.num_layers)])[None])
               for m in g.layout.modules}
    with torch.no_grad():
        with batched_lora(g.edge, g.layout, stacked):
            routed = g.edge(input_ids=ids).logits
        base = g.edge(input_ids=ids).logits
        via_peft = peft_model(input_ids=ids).logits
        via_merge = merged(input_ids=ids).logits
    assert (routed - base).abs().max().item() > 1e-6        # the adapter changes the model
    assert (via_peft - routed).abs().max().item() < 1e-5
    assert (via_merge - routed).abs().max().item() < 1e-5
    # batch generation equals one-at-a-time generation
    batch = generate_adapters(g, TASKS)
    one = generate_adapters(g, [TASKS[2]])[0]
    for k, (a, b) in one.factors.items():
        assert torch.allclose(batch[2].factors[k][0], a, atol=1e-6)
        assert torch.allclose(batch[2].factors[k][1], b, atol=1e-6)


def _loragen(*args, **kw):
    return subprocess.run([sys.executable, "-m", "loragen_mobile", *map(str, args)],
                          capture_output=True, text=True, **kw)


def _final_state(run: Path) -> dict:
    from safetensors.torch import load_file

    state = load_file(str(run / "generator.safetensors"))
    state.update({f"cloud.{k}": v for k, v in load_file(str(run / "cloud-adapter" / "adapter_model.safetensors")).items()})
    return state


def _write_cfg(tmp_path, **kw) -> Path:
    import yaml

    doc = yaml.safe_load(TINY.read_text())
    doc["generator"].update({**GEN_OVERRIDES, **kw})
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(doc))
    return p


def test_resume_after_sigkill_reaches_the_same_weights(tmp_path, preset_dirs, gen_data):
    cfg = _write_cfg(tmp_path, max_steps=12, save_every=3)
    common = ["train", "--config", cfg, "--edge", preset_dirs["tiny-llama"], "--data", gen_data, "--no-progress"]
    r = _loragen(*common, "--out", tmp_path / "straight")
    assert r.returncode == 0, r.stderr
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "loragen_mobile", *map(str, common), "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (run / "checkpoint.pt").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "generator.json").exists()              # killed before the end
    r = _loragen(*common, "--out", run, "--resume")
    assert r.returncode == 0, r.stderr
    a, b = _final_state(tmp_path / "straight"), _final_state(run)
    assert a.keys() == b.keys()
    # parameters to 1e-6; BatchNorm running statistics (magnitudes up to ~1e2) to 1e-6 relative.
    # Bit-exactness is not expected: CPU kernels may reduce in a different order between processes.
    for k in a:
        scale = max(1.0, a[k].float().abs().max().item())
        assert (a[k].float() - b[k].float()).abs().max().item() <= 1e-6 * scale, k
    la = [json.loads(x) for x in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in lb] == list(range(1, 13))
    assert max(abs(x["lm_loss"] - y["lm_loss"]) for x, y in zip(la, lb)) <= 1e-6


def test_torchrun_two_processes_match_one_process(tmp_path, preset_dirs, gen_data):
    """DDP over gloo with the same global batch: first-step losses equal to 1e-5, later ones to
    5e-5 (dropout off so both runs draw no random masks)."""
    cfg = _write_cfg(tmp_path, max_steps=3, cloud_lora_dropout=0.0, tasks_per_step=4)
    common = ["--config", cfg, "--edge", preset_dirs["tiny-llama"], "--data", gen_data, "--no-progress"]
    r = _loragen("train", *common, "--out", tmp_path / "one")
    assert r.returncode == 0, r.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_port", "29571", "-m", "loragen_mobile", "train", *map(str, common),
                        "--out", str(tmp_path / "two")], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    one = [json.loads(x) for x in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert len(one) == len(two) == 3
    # the first step's losses come from the same weights; the later ones from weights that the
    # differently ordered all-reduce moved by up to a learning rate in a few elements (see below):
    # 1.01e-5 apart at the third step on an AVX-512 machine
    for i, (x, y) in enumerate(zip(one, two)):
        tol = 1e-5 if i == 0 else 5e-5
        assert abs(x["lm_loss"] - y["lm_loss"]) <= tol
        assert abs(x["cv_loss"] - y["cv_loss"]) <= tol
    # the all-reduced gradient of the first step (same weights on both sides), by its norm before
    # clipping: catches a wrong loss scale, which the losses alone would not (Adam is scale-free)
    assert abs(one[0]["grad_norm"] - two[0]["grad_norm"]) <= 1e-6 * one[0]["grad_norm"]
    # Weights agree to within one learning-rate-sized step: Adam divides each gradient element by
    # its own magnitude, so float-rounding differences in near-zero gradient elements (the
    # all-reduced sums are added in another order) become updates of up to lr. The losses above
    # are the equivalence check; this bound catches a wrong gradient scale or a missing sync.
    a, b = _final_state(tmp_path / "one"), _final_state(tmp_path / "two")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-3


def test_gemma_edge_trains_and_generates(tmp_path, preset_dirs, gen_data):
    from loragen_mobile.generator import train

    run = train(_cfg(max_steps=2), preset_dirs["tiny-gemma"], gen_data, tmp_path / "run", progress=False)
    g = load_generator(run)
    assert g.layout.model_type == "gemma" and g.layout.modules["down_proj"] == (256, 128)
    a = generate_adapter(g, TASKS[1])
    assert a.model_type == "gemma" and a.factors["model.layers.3.mlp.gate_proj"][0].shape == (g.cfg.rank, 128)


def test_cli_errors_are_one_line_and_leave_files_alone(tmp_path, preset_dirs, gen_data, generator_run, capsys):
    cfg = _write_cfg(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("generator:\n  n_expert: 8\n")
    nonempty = tmp_path / "busy"
    nonempty.mkdir()
    (nonempty / "keep.txt").write_text("x")
    cases = [
        (["train", "--config", bad, "--edge", preset_dirs["tiny-llama"], "--data", gen_data, "--out", tmp_path / "r1"], "n_expert"),
        (["train", "--config", cfg, "--edge", preset_dirs["tiny-llama"], "--data", gen_data, "--out", nonempty], "not empty"),
        (["train", "--config", cfg, "--edge", preset_dirs["tiny-llama"], "--data", gen_data, "--out", tmp_path / "r2", "--resume"], "resume"),
        (["train", "--config", cfg, "--edge", preset_dirs["tiny-llama"], "--data", tmp_path / "none.jsonl", "--out", tmp_path / "r3"], "does not exist"),
        (["generate", "--generator", tmp_path, "--task", "x", "--out", tmp_path / "a1"], "not a generator run"),
        (["generate", "--generator", generator_run, "--task", " ", "--out", tmp_path / "a2"], "non-empty"),
        (["generate", "--generator", generator_run, "--task", "x", "--out", nonempty], "already exists"),
        (["generate", "--generator", generator_run, "--edge-typo", "x"], ""),
    ]
    from loragen_mobile.cli import main

    for args, msg in cases:
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse usage errors
            rc = e.code
        err = capsys.readouterr().err.replace("\r", "\n")
        assert rc == 2, (args, err)
        if msg:
            lines = [ln for ln in err.splitlines() if ln.startswith("loragen")]
            assert len(lines) == 1 and lines[0].startswith("loragen: error: ") and msg in lines[0], (args, err)
    assert sorted(p.name for p in nonempty.iterdir()) == ["keep.txt"]
    assert not any((tmp_path / n).exists() for n in ("r1", "r2", "r3", "a1", "a2"))


def test_generate_batch_mode_writes_one_adapter_per_name(tmp_path, generator_run, capsys):
    from loragen_mobile.lora import load_peft_adapter

    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"name": f"t{i}", "task": t}) + "\n" for i, t in enumerate(TASKS)))
    r = _loragen("generate", "--generator", generator_run, "--tasks", tasks, "--out", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    g = load_generator(generator_run)
    for i, t in enumerate(TASKS):
        a = load_peft_adapter(tmp_path / "out" / f"t{i}")
        assert a.metadata["loragen.task_sha256"] == task_sha256(t)
        ref = generate_adapter(g, t)
        assert all(torch.allclose(a.factors[k][1], ref.factors[k][1], atol=1e-6) for k in ref.factors)
    tasks.write_text('{"name": "../evil", "task": "x"}\n')
    from loragen_mobile.cli import main

    assert main(["generate", "--generator", str(generator_run), "--tasks", str(tasks), "--out", str(tmp_path / "out2")]) == 2
    assert "plain file name" in capsys.readouterr().err and not (tmp_path / "out2").exists()


def test_eval_reports_accuracy_tokens_and_compression(tmp_path, generator_run):
    from conftest import prompt_text

    from loragen_mobile.data import group_by_task, make_suite, task_skills, write_jsonl
    from loragen_mobile.generator.evaluate import METHODS, evaluate

    recs = []
    for suite in ("reasoning", "tools"):  # two tasks per suite that share no skill (another rule, other tools)
        groups = group_by_task(make_suite(suite, "unseen", per_task=4))
        first = next(iter(groups))
        second = next(t for t in groups if not task_skills(t) & task_skills(first))
        recs += groups[first] + groups[second]
    data = tmp_path / "unseen.jsonl"
    write_jsonl(recs, data)
    rep = evaluate(generator_run, data, lora_steps=3, progress=False)
    g = load_generator(generator_run)
    tok = g.edge_tokenizer
    for suite in ("reasoning", "tools"):
        row = rep["results"][suite]["unseen"]
        scored = [r for tid, rs in group_by_task([r for r in recs if r["suite"] == suite]).items() for r in rs[2:]]
        want_with = sum(1 + len(tok(prompt_text(r["system"], r["input"]), add_special_tokens=False)["input_ids"]) for r in scored) / len(scored)
        want_without = sum(1 + len(tok(prompt_text(None, r["input"]), add_special_tokens=False)["input_ids"]) for r in scored) / len(scored)
        assert row["edge_prompt"]["mean_input_tokens"] == pytest.approx(want_with)
        assert row["loragen"]["mean_input_tokens"] == pytest.approx(want_without)
        assert row["compression_ratio"] == pytest.approx(want_with / want_without)
        for m in METHODS:
            assert row[m]["n"] == 4 and row[m]["tasks"] == 2 and 0.0 <= row[m]["accuracy"] <= 1.0
        assert row["excluded_train_overlap"] == 0
    # an untrained edge model answers nothing right, with or without the prompt
    assert rep["results"]["tools"]["unseen"]["edge_prompt"] == {**rep["results"]["tools"]["unseen"]["edge_prompt"],
                                                               "accuracy": 0.0, "stderr": 0.0}
    # the other-task control pairs tasks of one suite that share no skill (rule; tool intents)
    for tid, other in rep["other_task"].items():
        assert other.split("-")[0] == tid.split("-")[0] and not task_skills(tid) & task_skills(other)
    # scored examples that occur in the training data are left out and counted
    train = tmp_path / "train.jsonl"
    first = group_by_task(recs)
    dup = [rs[2] for rs in first.values()][:3]
    write_jsonl(dup, train)
    rep2 = evaluate(generator_run, data, methods=("edge_no_prompt",), progress=False, train_data=train)
    assert rep2["results"]["reasoning"]["unseen"]["excluded_train_overlap"] == 2
    assert rep2["results"]["reasoning"]["unseen"]["edge_no_prompt"]["n"] == 2
    assert rep2["results"]["tools"]["unseen"]["excluded_train_overlap"] == 1
    assert rep2["results"]["tools"]["unseen"]["edge_no_prompt"]["n"] == 3


def test_eval_controls_and_standard_errors():
    from loragen_mobile.generator.evaluate import accuracy_stats, mean_factors, other_tasks

    # the standard error treats tasks as clusters: 4 tasks of 8 examples, per-task 8, 0, 4, 4 correct
    st = accuracy_stats([(8, 8), (0, 8), (4, 8), (4, 8)])
    assert st["accuracy"] == 0.5 and st["n"] == 32 and st["tasks"] == 4
    assert st["stderr"] == pytest.approx((4 / 3 * (16 + 16 + 0 + 0)) ** 0.5 / 32)  # = 0.2041, not sqrt(.25/32) = 0.088
    assert accuracy_stats([(3, 4)])["stderr"] == pytest.approx((0.75 * 0.25 / 4) ** 0.5)
    # the mean adapter's delta is exactly the mean of the deltas
    g = torch.Generator().manual_seed(0)
    fs = [{"m": (torch.randn(2, 5, generator=g), torch.randn(3, 2, generator=g))} for _ in range(3)]
    a, b = mean_factors(fs)["m"]
    torch.testing.assert_close(b @ a, sum(bb @ aa for aa, bb in (f["m"] for f in fs)) / 3)
    # reasoning: never the same rule; tools: no shared intent; a lone task of a suite is its own control
    ids = ["reasoning-u-reverse-p4-f2", "reasoning-u-reverse-p5-f2", "reasoning-u-upper-p4-f2",
           "tools-weather0-timer1-music2", "tools-weather1-call0-news0", "tools-stock0-light1-translate2", "custom-x"]
    suites = ["reasoning"] * 3 + ["tools"] * 3 + ["custom"]
    assert other_tasks(ids, suites) == {0: 2, 1: 2, 2: 0, 3: 5, 4: 5, 5: 3, 6: 6}


def test_bundle_build_from_generator_matches_the_merged_pytorch_model(tmp_path, generator_run, preset_dirs, capsys):
    """`loragen bundle build --generator RUN --task TEXT`: the swapped ONNX artifact computes what
    the PyTorch edge model merged with the generated LoRA computes."""
    from loragen_mobile.bundle import open_runner_with_bundle, verify_bundle
    from loragen_mobile.bundle.keys import generate_keypair, load_public_key
    from loragen_mobile.cli import main
    from loragen_mobile.exporters import get_exporter
    from loragen_mobile.lora import merge_into_model

    art = tmp_path / "onnx"
    get_exporter("onnx").export(preset_dirs["tiny-llama"], art, max_context=64, progress=False)
    generate_keypair(tmp_path / "k.pem", tmp_path / "k.pub")
    task = TASKS[1]
    for kind in ("merged", "lora"):
        out = tmp_path / f"{kind}.bundle"
        assert main(["bundle", "build", "--artifact", str(art), "--generator", str(generator_run), "--task", task,
                     "--kind", kind, "--sign-key", str(tmp_path / "k.pem"), "--out", str(out)]) == 0
        g = load_generator(generator_run)
        vb = verify_bundle(out, art, load_public_key(tmp_path / "k.pub"))
        assert vb.kind == kind and vb.manifest["generator_id"] == g.generator_id
        assert vb.manifest["task_sha256"] == task_sha256(task)
        merged = merge_into_model(g.edge, generate_adapter(g, task))
        ids = [1] + list(range(50, 80))
        with torch.no_grad():
            want = merged(input_ids=torch.tensor([ids])).logits[0, -1]  # prefill returns the last position
        got = open_runner_with_bundle(out, art, load_public_key(tmp_path / "k.pub")).prefill(ids)
        assert (got - want).abs().max().item() < 1e-4


def test_results_accuracy_table_is_rendered_from_the_reports():
    """docs/results.md's accuracy table and full-size benchmark tables are exactly what
    scripts/render_results.py renders from the reports in docs/eval/ and the JSON files of the
    full-size run in docs/bench/ (no hand-typed figure)."""
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("render_results", root / "scripts" / "render_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    text = mod.DOC.read_text()
    assert mod.render(text) == text
    table = text.split(mod.BEGIN, 1)[1].split(mod.END, 1)[0]
    assert table.count("\n| tiny-") >= 4  # both presets, unseen and seen
    bench = text.split(mod.BENCH_BEGIN, 1)[1].split(mod.BENCH_END, 1)[0]
    assert bench.count("`loragen bench ") >= 6 and "| onnx/fp32 | og-builder |" in bench


def test_train_seed_option_overrides_the_configs_seed(tmp_path, preset_dirs, gen_data):
    """`loragen train --seed` changes the initialisation and the data order: the run records it, and
    its first step's loss differs from the config's seed 0 run. `--shuffle-lists` is recorded too."""
    cfg = _write_cfg(tmp_path, max_steps=1, save_every=1)
    common = ["train", "--config", cfg, "--edge", preset_dirs["tiny-llama"], "--data", gen_data, "--no-progress"]
    runs = (("s0", []), ("s1", ["--seed", "1"]), ("sh", ["--shuffle-lists"]))
    for name, extra in runs:
        r = _loragen(*common, "--out", tmp_path / name, *extra)
        assert r.returncode == 0, r.stderr
    meta = [json.loads((tmp_path / n / "generator.json").read_text()) for n, _ in runs]
    assert [(m["config"]["seed"], m["config"]["shuffle_lists"]) for m in meta] == [(0, False), (1, False), (0, True)]
    loss = [json.loads((tmp_path / n / "log.jsonl").read_text().splitlines()[0])["lm_loss"] for n in ("s0", "s1")]
    assert abs(loss[0] - loss[1]) > 1e-4, loss


def test_seed_table_gives_the_mean_over_seeds_and_its_gap_to_the_prompt():
    from loragen_mobile.generator.evaluate import format_seed_table

    def rep(acc, edge=None):
        row = {"loragen": {"accuracy": acc, "stderr": 0.01}}
        if edge is not None:
            row["edge_prompt"] = {"accuracy": edge, "stderr": 0.02}
        return {"results": {"tools": {"unseen": row}}}

    text = format_seed_table([("tiny-llama", rep(0.5, edge=0.63), [rep(0.6), rep(0.7)])])
    head, rule, row = text.splitlines()
    assert head.split(" | ")[2:5] == ["LoRA-Gen, seed 0", "LoRA-Gen, seed 1", "LoRA-Gen, seed 2"]
    # mean 0.6; standard error of the mean over seeds 0.1 / sqrt(3); gap 0.6 - 0.63
    assert row == ("| tiny-llama | tools | 0.500 ± 0.010 | 0.600 ± 0.010 | 0.700 ± 0.010 | 0.600 ± 0.058 "
                   "| 0.630 ± 0.020 | -0.030 (missed) |")
    assert format_seed_table([("g", rep(0.62, edge=0.63), [rep(0.62), rep(0.62)])]).endswith("-0.010 (met) |")


def test_quant_table_gives_each_encoding_and_its_change_from_fp32():
    from loragen_mobile.generator.evaluate import format_quant_table

    def rep(encoding, tools, reasoning):
        def row(acc):
            return {"loragen": {"accuracy": acc, "stderr": 0.01}, "loragen_other_task": {"accuracy": 0.2, "stderr": 0.02}}

        return {"weight_encoding": encoding, "results": {"reasoning": {"unseen": row(reasoning)},
                                                         "tools": {"unseen": row(tools)}}}

    text = format_quant_table([("tiny-llama", rep(None, 0.5, 0.25), [rep("ort-int8-b128", 0.488, 0.25)])])
    head, _, fp32, int8 = text.splitlines()
    assert head.split(" | ")[2:4] == ["tools: LoRA-Gen", "tools: other task's description"]
    assert fp32 == "| tiny-llama | fp32 | 0.500 ± 0.010 | 0.200 ± 0.020 | 0.250 ± 0.010 | 0.200 ± 0.020 | - | - |"
    assert int8.endswith("| `ort-int8-b128` | 0.488 ± 0.010 | 0.200 ± 0.020 | 0.250 ± 0.010 | 0.200 ± 0.020 | -1.2 | +0.0 |")
