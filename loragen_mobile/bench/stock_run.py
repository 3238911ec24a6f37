"""One artifact through its stock runtime, in a process of its own (`loragen bench peers` runs it):
cold load + first token, then prefill time and decode tokens/s over repeated generations.

  python -m loragen_mobile.bench.stock_run og DIR PROMPT.json NEW REPEATS OUT.json
  python -m loragen_mobile.bench.stock_run executorch DIR PROMPT.json NEW REPEATS OUT.json

onnxruntime-genai (og.Model, og.Generator) gets the prompt's token ids; ExecuTorch's LLM runner
(TextLLMRunner of the pinned wheel) gets its text and adds BOS itself, as an app does. Both decode
greedily for NEW tokens (og: EOS held off with min_length; the runner stops at EOS, and the count
of tokens it generated is recorded), and the greedy token ids are recorded (og: the last generation's; ExecuTorch:
through the program's forward, see _et_greedy). Prefill time is the prompt's forward; decode tokens/s counts
the forwards after it (NEW - 1: the first new token comes from the prefill's logits).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path


def _og(art: Path, prompt: dict, new: int, repeats: int) -> dict:
    import onnxruntime_genai as og

    ids = prompt["ids"]
    t0 = time.perf_counter()
    model = og.Model(str(art))
    load_s = time.perf_counter() - t0

    tokens: list[int] = []

    def generate(n: int) -> tuple[float, float, int]:
        tokens.clear()
        params = og.GeneratorParams(model)
        params.set_search_options(do_sample=False, max_length=len(ids) + n, min_length=len(ids) + n)
        gen = og.Generator(model, params)
        t0 = time.perf_counter()
        gen.append_tokens(ids)
        gen.generate_next_token()  # sampled from the prefill's logits
        t1 = time.perf_counter()
        k = 1
        while not gen.is_done():
            gen.generate_next_token()
            k += 1
        t2 = time.perf_counter()
        tokens.extend(int(t) for t in gen.get_sequence(0)[len(ids):])
        return t1 - t0, t2 - t1, k

    first = generate(1)[0]
    runs = [generate(new) for _ in range(repeats)]
    return {"load_s": load_s, "cold_first_token_s": load_s + first, "prompt_tokens": len(ids),
            "new_tokens": runs[0][2], "tokens": list(tokens), **_rates(runs)}


def _executorch(art: Path, prompt: dict, new: int, repeats: int) -> dict:
    from executorch.extension.llm.runner import GenerationConfig, TextLLMRunner

    ptd = art / "model.ptd"
    t0 = time.perf_counter()
    runner = TextLLMRunner(str(art / "model.pte"), str(art / "tokenizer.json"), str(ptd) if ptd.exists() else None)
    stats = []

    def generate(n: int):
        runner.reset()
        cfg = GenerationConfig(echo=False, max_new_tokens=n, temperature=0.0, num_bos=1)
        runner.generate(prompt["text"], cfg, stats_callback=stats.append)
        return stats[-1]

    s = generate(1)  # the runner loads the program on its first generation
    cold = time.perf_counter() - t0
    load_s = (s.model_load_end_ms - s.model_load_start_ms) / 1e3
    runs = []
    for _ in range(repeats):
        s = generate(new)
        runs.append(((s.prompt_eval_end_ms - s.inference_start_ms) / 1e3,
                     (s.inference_end_ms - s.prompt_eval_end_ms) / 1e3, s.num_generated_tokens))
    res = {"load_s": load_s, "cold_first_token_s": cold, "prompt_tokens": s.num_prompt_tokens,
           "new_tokens": min(k for _, _, k in runs), **_rates(runs)}
    runner = s = None  # one loaded program at a time: the process's peak RSS is the runner's
    stats.clear()
    return {**res, "tokens": _et_greedy(art, prompt["ids"], new)}


def _et_greedy(art: Path, ids: list[int], new: int) -> list[int]:
    """The greedy token ids through the program's forward (tokens [1, T], positions [T]: the LLM
    runner's calling convention). The runner's token callback cannot serve: it hands Python each
    piece as str, and a random-weight model emits byte pieces that are not valid UTF-8."""
    import torch
    from executorch.runtime import Runtime

    ptd = art / "model.ptd"
    prog = Runtime.get().load_program(str(art / "model.pte"), **({"data_path": str(ptd)} if ptd.exists() else {}))
    method = prog.load_method("forward")
    out, pos, step = [], 0, list(ids)
    for _ in range(new):
        logits = method.execute([torch.tensor([step]), torch.arange(pos, pos + len(step))])[0]
        pos += len(step)
        step = [int(logits.reshape(-1, logits.shape[-1])[-1].argmax())]
        out.append(step[0])
    return out


def _rates(runs: list[tuple[float, float, int]]) -> dict:
    pre = statistics.median(p for p, _, _ in runs)
    dec = [(k - 1) / d for _, d, k in runs if k > 1 and d > 0]
    return {"prefill_ms": 1e3 * pre, "prefill_ms_all": [1e3 * p for p, _, _ in runs],
            "decode_tokens_per_s": statistics.median(dec) if dec else None,
            "decode_tokens_per_s_all": dec}


RUNTIMES = {"og": _og, "executorch": _executorch}


def main(argv: list[str]) -> None:
    runtime, art, prompt, new, repeats, out = argv
    res = RUNTIMES[runtime](Path(art), json.loads(Path(prompt).read_text()), int(new), int(repeats))
    Path(out).write_text(json.dumps(res) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
