"""`loragen quickstart`: the whole story on the built-in tiny presets, in one command.

Stages run in order, each reported with a progress bar; every figure printed comes from this run.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

from .errors import LoragenError


def run_quickstart(out: str | os.PathLike, fast: bool = False, seed: int = 0) -> dict:
    import torch
    from peft import PeftModel
    from tqdm import tqdm

    from . import lora, models

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise LoragenError(f"output directory {out} is not empty; choose a new one (nothing was written)")
    for sub in ("models", "adapters"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    report: dict = {"presets": {}}
    presets = ("tiny-llama", "tiny-gemma")
    stages = tqdm(total=3 * len(presets), desc="quickstart", unit="stage")
    for preset in presets:
        stages.set_postfix_str(f"{preset}: init-model")
        model_dir = models.init_model_dir(preset, out / "models" / preset, seed=seed)
        stages.update()
        stages.set_postfix_str(f"{preset}: merge")
        base = models.load_model(model_dir)
        adapter = lora.random_adapter(base, models.target_module_names(base), r=16, alpha=16, seed=seed + 1, std=0.05)
        adapter_dir = lora.save_peft_adapter(adapter, out / "adapters" / f"{preset}-random", base_model=str(model_dir))
        merged_dir = lora.merge_dir(model_dir, adapter_dir, out / "models" / f"{preset}-merged")
        stages.update()
        stages.set_postfix_str(f"{preset}: check against PEFT")
        merged = models.load_model(merged_dir)
        peft_model = PeftModel.from_pretrained(copy.deepcopy(base), str(adapter_dir)).eval()
        ids = torch.tensor([[1] + list(range(40, 72))])
        with torch.no_grad():
            diff = (merged(ids).logits - peft_model(ids).logits).abs().max().item()
        stages.update()
        report["presets"][preset] = {
            "params": sum(p.numel() for p in base.parameters()),
            "lora_modules": len(adapter.factors),
            "lora_params": sum(a.numel() + b.numel() for a, b in adapter.factors.values()),
            "merged_vs_peft_max_abs_logit_diff": diff,
        }
    stages.close()
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def format_table(report: dict) -> str:
    rows = [("preset", "params", "LoRA modules", "LoRA params", "max |merged - PEFT| logits")]
    for preset, r in report["presets"].items():
        rows.append((preset, f"{r['params']:,}", str(r["lora_modules"]), f"{r['lora_params']:,}",
                     f"{r['merged_vs_peft_max_abs_logit_diff']:.2e}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
