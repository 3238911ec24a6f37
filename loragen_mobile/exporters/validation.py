"""Validation of an artifact against its source model: a report of named checks (identity,
fingerprint, logits vs eager PyTorch within a per-precision threshold)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..models import config_hash
from .artifact import Artifact
from .common import Reference
from .runner import Runner

# Validation thresholds (max abs logits difference vs eager PyTorch fp32), per precision; a quantized
# artifact vs fp32 (reported, looser: "int8"/"int4") and vs the same-scheme quantized eager model
# ("same_scheme", tight: a wrong scale, code or layout is far above it). Schemes that quantize the
# activations to int8 at run time ("dynamic_int8"): a float rounding difference between the runtime's
# kernels and eager PyTorch can move one activation by one int8 step. On an AVX2 machine the runtimes
# matched the eager emulation to ~1e-6; on an AVX-512 (VNNI) machine their kernels compute
# differently, 0.05-0.2 logits from it on the random test models (onnxruntime's int8-activation
# MatMulNBits about as far from the emulation as from fp32 inputs there). A wrong scale or layout is
# off by units.
THRESHOLDS = {"fp32": 1e-4, "fp16": 5e-2, "int8": 0.25, "int4": 1.0, "same_scheme": 2e-2, "dynamic_int8": 0.5}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""
    value: float | None = None
    threshold: float | None = None


@dataclass
class ValidationReport:
    artifact: str
    backend: str
    precision: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    def add(self, name: str, ok: bool, detail: str = "", value=None, threshold=None) -> Check:
        c = Check(name, bool(ok), detail, None if value is None else float(value), threshold)
        self.checks.append(c)
        return c

    def to_dict(self) -> dict:
        return {"artifact": self.artifact, "backend": self.backend, "precision": self.precision,
                "ok": self.ok, "checks": [c.__dict__ for c in self.checks]}

    def to_junit(self) -> str:
        from xml.sax.saxutils import quoteattr

        fails = sum(not c.ok for c in self.checks)
        suite = f"validate-{self.backend}"
        lines = ['<?xml version="1.0" encoding="utf-8"?>',
                 f'<testsuite name={quoteattr(suite)} tests="{len(self.checks)}" failures="{fails}" errors="0">']
        for c in self.checks:
            lines.append(f"  <testcase classname={quoteattr(suite)} name={quoteattr(c.name)}>")
            if not c.ok:
                lines.append(f"    <failure message={quoteattr(c.detail or 'failed')}/>")
            else:
                lines.append(f"    <system-out>{_xml_text(c.detail)}</system-out>")
            lines.append("  </testcase>")
        lines.append("</testsuite>")
        return "\n".join(lines) + "\n"

    def summary(self) -> str:
        rows = [f"{'PASS' if c.ok else 'FAIL'}  {c.name}  {c.detail}" for c in self.checks]
        rows.append(f"{'OK' if self.ok else 'FAILED'}: {sum(c.ok for c in self.checks)}/{len(self.checks)} "
                    f"checks passed ({self.backend}, {self.precision})")
        return "\n".join(rows)


def _xml_text(s: str) -> str:
    from xml.sax.saxutils import escape

    return escape(s)


VALIDATION_PROMPT = [1, 72, 105, 33, 32, 119, 101, 108, 99, 111, 109, 101]  # fixed ids: <s> + 11 byte tokens


def validation_prompt(config, max_context: int, steps: int) -> list[int]:
    """The fixed validation prompt, made longer than the model's sliding window (if any layer has one)
    so that the window's mask is exercised; it always leaves room for ``steps`` decode steps."""
    n = len(VALIDATION_PROMPT)
    window = getattr(config, "sliding_window", None)
    kinds = getattr(config, "layer_types", None) or ()
    if window and ("sliding_attention" in kinds or getattr(config, "use_sliding_window", False)):
        n = max(n, int(window) + 8)
    body = VALIDATION_PROMPT[1:]
    prompt = VALIDATION_PROMPT[:1] + [body[i % len(body)] for i in range(n - 1)]
    return prompt[: max(1, min(n, max_context - steps - 1))]


def check_identity(report: ValidationReport, art: Artifact, model_dir: Path, model) -> None:
    ch = config_hash(model.config)
    report.add("config_hash", ch == art.meta["config_hash"],
               "matches the model" if ch == art.meta["config_hash"] else
               f"artifact was exported from a different architecture ({art.meta['config_hash'][:12]} != {ch[:12]})")


def check_fingerprint(report: ValidationReport, exporter, art: Artifact) -> None:
    fp = exporter.fingerprint(art.path, art.meta)
    report.add("fingerprint", fp == art.meta["fingerprint"],
               "graph and non-swappable weights unchanged" if fp == art.meta["fingerprint"]
               else f"files changed since export ({fp[:12]} != {art.meta['fingerprint'][:12]})")


def check_logits(report: ValidationReport, runner: Runner, model, prompt: list[int], steps: int,
                 threshold: float, prefix: str = "", exact_greedy: bool = False, report_only: bool = False) -> None:
    """Compare the prefill's last-position logits and ``steps`` decode steps with eager PyTorch (fp32),
    teacher-forced. Check names start with ``prefix``; the greedy tokens must match when the
    threshold is fp32's or ``exact_greedy``. ``report_only``: the differences are recorded (value,
    and whether they are within ``threshold``, in the detail) but never fail the report."""
    ref = Reference(model.float())
    ref.reset()
    r_logits = ref.step(prompt)[-1]
    a_logits = runner.prefill(prompt)
    d = float((a_logits - r_logits).abs().max()) if a_logits.shape == r_logits.shape else float("inf")
    def within(d: float) -> bool:
        return report_only or d <= threshold

    def detail(d: float) -> str:
        if report_only:
            return f"max abs diff {d:.3g} (reported; {'within' if d <= threshold else 'beyond'} {threshold:g})"
        return f"max abs diff {d:.3g} (<= {threshold:g})"

    report.add(f"{prefix}prefill_logits", within(d), detail(d), d, threshold)
    same = True
    for i in range(steps):
        tok = int(r_logits.argmax())
        same &= tok == int(a_logits.argmax())
        r_logits = ref.step([tok])[-1]
        a_logits = runner.decode(tok)
        d = float((a_logits - r_logits).abs().max()) if a_logits.shape == r_logits.shape else float("inf")
        report.add(f"{prefix}decode_step_{i + 1}_logits", within(d), detail(d), d, threshold)
    report.add(f"{prefix}greedy_tokens", same or report_only or (threshold > 1e-4 and not exact_greedy),
               ("greedy argmax equals eager at every step" if same else "greedy argmax differs from eager")
               + (" (reported)" if report_only else ""))
