"""Edge training: every step takes one length batch of each suite under an even share of the
token budget, and the micro-batches' accumulated gradient is the whole step's."""

import random

import torch

from loragen_mobile import models
from loragen_mobile.data import make_suite
from loragen_mobile.edge_training import accumulate_step, balanced_steps
from loragen_mobile.training import lm_example, pad_lm_batch, token_ce_sum


def test_each_step_has_one_batch_of_every_suite_within_its_budget():
    rng = random.Random(0)
    suites = ["a"] * 300 + ["b"] * 40 + ["c"] * 7
    lengths = [rng.randrange(10, 60) for _ in range(300)] + [rng.randrange(200, 300) for _ in range(40)] + [90] * 7
    steps = balanced_steps(suites, lengths, 1200, random.Random(1))
    seen = {"a": [], "b": [], "c": []}
    for _ in range(12):
        step = next(steps)
        assert [suites[b[0]] for b in step] == ["a", "b", "c"]
        for b in step:
            assert len({suites[i] for i in b}) == 1 and len(b) * max(lengths[i] for i in b) <= 400
            seen[suites[b[0]]] += b
    # "c" (7 examples of 90 tokens, 4 fit in 400) cycles through all its examples before repeating
    assert sorted(seen["c"][:7]) == list(range(340, 347))
    # a single suite: the plain length batches under the whole budget
    one = next(balanced_steps(["a"] * 300, lengths[:300], 1200, random.Random(1)))
    assert len(one) == 1 and len(one[0]) * max(lengths[i] for i in one[0]) <= 1200


def test_accumulated_gradient_is_the_whole_steps(tmp_path):
    d = models.init_model_dir("tiny-llama", tmp_path / "m", seed=0)
    model, tok = models.load_model(d, dtype=torch.float32), models.load_tokenizer(d)
    recs = make_suite("reasoning", "train", per_task=1)[:5] + make_suite("tools", "train", per_task=1)[:3]
    ex = [lm_example(tok, r["system"], r["input"], r["target"]) for r in recs]
    loss = accumulate_step(model, [pad_lm_batch(ex[:5], tok.pad_token_id), pad_lm_batch(ex[5:], tok.pad_token_id)])
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    ids, labels = pad_lm_batch(ex, tok.pad_token_id)  # one batch: right padding changes no labelled logit
    ce, n = token_ce_sum(model(input_ids=ids).logits, labels)
    (ce / n).backward()
    assert abs(loss - float(ce.detach()) / n) < 1e-5
    for name, p in model.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-4, atol=1e-6)


def test_training_record_keeps_the_loss_curve(tmp_path):
    """`loragen_edge_training.json` keeps the mean loss of every 100 steps (a run stalled on a
    plateau shows there): 150 steps give two means, and a random model learns, so the second is lower."""
    import json

    from loragen_mobile.data import write_jsonl
    from loragen_mobile.edge_training import EdgeTrainConfig, train_edge

    d = models.init_model_dir("tiny-llama", tmp_path / "m", seed=0)
    data = tmp_path / "train.jsonl"
    write_jsonl(make_suite("reasoning", "train", per_task=2)[:16] + make_suite("tools", "train", per_task=1)[:8], data)
    cfg = EdgeTrainConfig(max_steps=150, tokens_per_step=1024, balance_suites=True)
    res = train_edge(d, data, tmp_path / "edge", cfg, progress=False)
    rec = json.loads((tmp_path / "edge" / "loragen_edge_training.json").read_text())
    curve = rec["loss_per_100_steps"]
    assert len(curve) == 2 and curve[1] < curve[0] - 0.5, curve
    assert rec["final_loss"] == res["final_loss"] and abs(curve[1] - res["final_loss"]) < 1.0
