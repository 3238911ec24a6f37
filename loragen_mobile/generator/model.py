"""The LoRA-Gen generator (arXiv 2506.11638): meta tokens, per-layer routers, expert pools.

A cloud-side causal LM (frozen, adapted with PEFT LoRA on q/v) reads a task description followed
by L learned meta tokens (L = number of edge layers). The final hidden state at meta position i,
T_i, is routed over layer i's pool of n LoRA experts:

    R_i = BatchNorm(f2(SiLU(f1(T_i))))          (n logits)
    G_i = KeepTopK(softmax(R_i), K), renormalised to sum 1

and the layer's update for target module m is sum_j G_ij * B_jm @ A_jm. It is represented exactly
as one rank-K*r pair by concatenating the K selected experts' factors (B scaled by G_ij), so
adapters and bundles stay small (:func:`routed_factors`; ``tests/test_generator.py`` checks it
against the dense mixture).

BatchNorm: during training the statistics come from the batch of task descriptions (across all
processes under torchrun, so a 2-process run equals a 1-process run with the same global batch).
At inference the module is in eval mode and uses its running statistics, so one description alone
gets exactly the gates it gets inside any batch.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..config import from_mapping
from ..errors import LoragenError
from ..families import family_of
from ..models import target_module_names
from ..training import length_groups


@dataclass
class GeneratorConfig:
    # cloud side
    cloud: str = "edge"              # "edge" (the trained edge model), a preset name, or a local HF directory
    cloud_lora_r: int = 16
    cloud_lora_alpha: float = 16.0
    cloud_lora_dropout: float = 0.05
    cloud_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    # routed experts
    n_experts: int = 8
    top_k: int = 2
    expert_rank: int = 16
    expert_alpha: float = 16.0       # expert scale = expert_alpha / expert_rank
    router_hidden: int = 64
    bn_momentum: float = 0.1
    targets: list[str] = field(default_factory=lambda: ["gate_proj", "up_proj", "down_proj"])
    # loss
    alpha_cv: float = 0.01
    # data: each step lists a description's "- " items (tool definitions) in a new order
    shuffle_lists: bool = False
    # optimisation
    lr: float = 2e-5
    lr_cloud: float | None = None    # defaults to lr
    warmup_steps: int = 50
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    dtype: str = "float32"           # float32 or bfloat16 (autocast)
    tasks_per_step: int = 64         # global batch of task descriptions
    examples_per_task: int = 1
    epochs: float = 4.0
    max_steps: int | None = None
    max_length: int = 2048
    save_every: int = 100
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict, what: str = "generator config", overrides: dict | None = None) -> "GeneratorConfig":
        cfg = from_mapping(cls, d, what, overrides)
        cfg.check()
        return cfg

    def to_dict(self) -> dict:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    def check(self) -> None:
        if not 1 <= self.top_k <= self.n_experts:
            raise LoragenError(f"top_k must be between 1 and n_experts ({self.n_experts}), got {self.top_k}")
        for k in ("expert_rank", "router_hidden", "tasks_per_step", "examples_per_task", "cloud_lora_r", "save_every"):
            if int(getattr(self, k)) < 1:
                raise LoragenError(f"{k} must be at least 1")
        if self.tasks_per_step < 2:
            raise LoragenError("tasks_per_step must be at least 2 (the routers' BatchNorm needs a batch)")
        if self.dtype not in ("float32", "bfloat16"):
            raise LoragenError(f"dtype must be float32 or bfloat16, got {self.dtype!r}")

    @property
    def rank(self) -> int:
        """Rank of a generated adapter: K selected experts of rank r, concatenated."""
        return self.top_k * self.expert_rank

    @property
    def expert_scale(self) -> float:
        return self.expert_alpha / self.expert_rank


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def _all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """Differentiable sum over processes (identity in a single process)."""
    if not _distributed():
        return x
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(x)


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics span the global batch of every process.

    torch.nn.SyncBatchNorm does the same but only runs on GPUs; this one works on CPU with gloo.
    Eval mode is plain BatchNorm with running statistics.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return super().forward(x)
        n = _all_reduce_sum(torch.tensor(float(x.shape[0]), dtype=x.dtype))
        mean = _all_reduce_sum(x.sum(0)) / n
        var = _all_reduce_sum(((x - mean) ** 2).sum(0)) / n
        if n.item() < 2:
            raise LoragenError("the routers' BatchNorm needs at least 2 task descriptions per step")
        with torch.no_grad():
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach() * m)
            self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)) * m)
            self.num_batches_tracked.add_(1)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class Router(nn.Module):
    """R = BatchNorm(f2(SiLU(f1(T)))): one per edge layer."""

    def __init__(self, hidden: int, router_hidden: int, n_experts: int, momentum: float):
        super().__init__()
        self.f1 = nn.Linear(hidden, router_hidden)
        self.f2 = nn.Linear(router_hidden, n_experts, bias=False)  # BatchNorm follows: a bias would cancel
        self.bn = GlobalBatchNorm1d(n_experts, momentum=momentum)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.bn(self.f2(F.silu(self.f1(t))))


def keep_top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """softmax, keep the k largest, renormalise to 1, zero the rest. Returns (dense gates, top-k indices)."""
    probs = logits.float().softmax(-1)
    top, idx = probs.topk(k, dim=-1)
    top = top / top.sum(-1, keepdim=True)
    gates = torch.zeros_like(probs).scatter(-1, idx, top)
    return gates, idx


def cv_squared(gates: torch.Tensor) -> torch.Tensor:
    """Squared coefficient of variation of the gate mass each expert receives over the (global)
    batch, averaged over layers. gates: (B, L, n)."""
    importance = _all_reduce_sum(gates.sum(0))            # (L, n)
    mean = importance.mean(-1)
    var = ((importance - mean[:, None]) ** 2).mean(-1)
    return (var / (mean ** 2 + 1e-10)).mean()


_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass(frozen=True)
class EdgeLayout:
    """Where the generated LoRA goes: per target module, its (in, out) features; module names
    follow ``template`` with the layer index."""

    num_layers: int
    modules: dict[str, tuple[int, int]]     # short name -> (in_features, out_features)
    names: dict[str, str]                   # short name -> template with {i}, e.g. model.layers.{i}.mlp.up_proj
    model_type: str

    @classmethod
    def of(cls, edge: nn.Module, targets) -> "EdgeLayout":
        """The layout of ``targets`` in ``edge`` (empty/``None``: the edge family's ``default_targets``;
        each must be one of the family's ``target_modules``)."""
        targets = tuple(targets or family_of(edge.config).default_targets)

        mods = dict(edge.named_modules())
        shapes: dict[str, tuple[int, int]] = {}
        names: dict[str, str] = {}
        layers = set()
        for full in target_module_names(edge, targets):
            m = _LAYER_RE.search(full)
            if not m:
                continue
            i, short = int(m.group(1)), full.split(".")[-1]
            layers.add(i)
            lin = mods[full]
            shape = (lin.in_features, lin.out_features)
            if shapes.setdefault(short, shape) != shape:
                raise LoragenError(f"edge module {full} has shape {shape}, other layers {shapes[short]}")
            names[short] = full[: m.start(1)] + "{i}" + full[m.end(1):]
        if not shapes:
            raise LoragenError(f"the edge model has none of the target modules {list(targets)}")
        n = len(layers)
        if layers != set(range(n)):
            raise LoragenError("edge layers are not numbered 0..L-1")
        return cls(n, dict(sorted(shapes.items())), dict(sorted(names.items())),
                   getattr(edge.config, "model_type", None))

    def to_dict(self) -> dict:
        return {"num_layers": self.num_layers, "modules": {k: list(v) for k, v in self.modules.items()},
                "names": self.names, "model_type": self.model_type}

    @classmethod
    def from_dict(cls, d: dict) -> "EdgeLayout":
        return cls(int(d["num_layers"]), {k: tuple(v) for k, v in d["modules"].items()}, dict(d["names"]),
                   d.get("model_type"))

    def module_name(self, short: str, layer: int) -> str:
        return self.names[short].format(i=layer)


class LoraGenerator(nn.Module):
    """Cloud model + meta tokens + routers + expert pools. ``cloud`` is a PEFT-wrapped causal LM."""

    def __init__(self, cloud: nn.Module, layout: EdgeLayout, cfg: GeneratorConfig):
        super().__init__()
        self.cloud, self.layout, self.cfg = cloud, layout, cfg
        hidden = cloud.get_input_embeddings().weight.shape[1]
        L, n, r = layout.num_layers, cfg.n_experts, cfg.expert_rank
        emb_std = float(cloud.get_input_embeddings().weight.detach().float().std())
        self.meta_tokens = nn.Parameter(torch.randn(L, hidden) * emb_std)
        self.routers = nn.ModuleList(Router(hidden, cfg.router_hidden, n, cfg.bn_momentum) for _ in range(L))
        # experts: A like a Linear init, B zero (the generated LoRA starts as the identity update)
        self.experts_a = nn.ParameterDict({
            m: nn.Parameter(torch.randn(L, n, r, fin) / fin ** 0.5) for m, (fin, _) in layout.modules.items()})
        self.experts_b = nn.ParameterDict({
            m: nn.Parameter(torch.zeros(L, n, fout, r)) for m, (_, fout) in layout.modules.items()})

    def generator_state(self) -> dict[str, torch.Tensor]:
        """Everything trained except the cloud LoRA (saved as a PEFT adapter)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("cloud.")}

    def meta_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, groups: int = 1) -> torch.Tensor:
        """(B, L, hidden): final hidden states at the meta positions, descriptions left-padded.

        ``groups`` > 1 runs the descriptions in up to that many length groups (:func:`length_groups`),
        each with only its own padding, and returns the rows in their order: the same states up to
        float rounding, for less compute when lengths differ (training uses it)."""
        if groups > 1:
            lengths = attention_mask.sum(1).tolist()
            T = input_ids.shape[1]
            parts, order = [], []
            for g in length_groups(lengths, groups):
                rows = torch.tensor(g)
                keep = T - max(lengths[i] for i in g)
                parts.append(self.meta_states(input_ids[rows, keep:], attention_mask[rows, keep:]))
                order += g
            return torch.cat(parts).index_select(0, torch.tensor(order).argsort())
        B = input_ids.shape[0]
        L = self.layout.num_layers
        emb = self.cloud.get_input_embeddings()(input_ids)
        x = torch.cat([emb, self.meta_tokens.to(emb.dtype).expand(B, L, -1)], 1)
        mask = torch.cat([attention_mask, attention_mask.new_ones(B, L)], 1)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        base = self.cloud.get_base_model()
        body = getattr(base, base.base_model_prefix)
        out = body(inputs_embeds=x, attention_mask=mask, position_ids=pos, use_cache=False)
        return out.last_hidden_state[:, -L:]

    def route(self, input_ids, attention_mask, groups: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
        """Dense gates G (B, L, n) and top-k expert indices (B, L, K)."""
        t = self.meta_states(input_ids, attention_mask, groups).float()
        logits = torch.stack([router(t[:, i]) for i, router in enumerate(self.routers)], 1)
        return keep_top_k(logits, self.cfg.top_k)

    def forward(self, input_ids, attention_mask, groups: int = 1):
        gates, idx = self.route(input_ids, attention_mask, groups)
        return gates, idx, routed_factors(self, gates, idx)


def routed_factors(gen: LoraGenerator, gates: torch.Tensor, idx: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per target module short name: (A (B, L, K*r, in), B (B, L, out, K*r)), the exact rank-K*r
    form of sum_j G_ij * scale * B_j @ A_j. The expert scale is folded into B."""
    Bn, L, K = idx.shape
    layer = torch.arange(L)[None, :, None].expand(Bn, L, K)
    g = gates.gather(-1, idx) * gen.cfg.expert_scale                     # (B, L, K)
    out = {}
    for m in gen.layout.modules:
        a = gen.experts_a[m][layer, idx]                                  # (B, L, K, r, in)
        b = gen.experts_b[m][layer, idx] * g[..., None, None]             # (B, L, K, out, r)
        r, fin = a.shape[-2:]
        fout = b.shape[-2]
        out[m] = (a.reshape(Bn, L, K * r, fin), b.permute(0, 1, 3, 2, 4).reshape(Bn, L, fout, K * r))
    return out


def dense_mixture(gen: LoraGenerator, gates: torch.Tensor) -> dict[str, torch.Tensor]:
    """sum_j G_ij * scale * B_j @ A_j as dense (B, L, out, in) updates (for tests)."""
    out = {}
    for m in gen.layout.modules:
        a, b = gen.experts_a[m], gen.experts_b[m]                         # (L, n, r, in), (L, n, out, r)
        per_expert = torch.einsum("lnor,lnri->lnoi", b, a)
        out[m] = torch.einsum("bln,lnoi->bloi", gates, per_expert) * gen.cfg.expert_scale
    return out


@contextlib.contextmanager
def batched_lora(edge: nn.Module, layout: EdgeLayout, factors: dict, rows: torch.Tensor | None = None):
    """Run ``edge`` with a different LoRA per batch row: out += (x @ A^T) @ B^T.

    ``factors``: short name -> (A (T, L, R, in), B (T, L, out, R)) for T tasks; ``rows`` maps each
    batch row to its task (default: row b uses task b). Gradients flow into the factors; the edge
    weights are untouched.
    """
    mods = dict(edge.named_modules())
    handles = []

    def hook_for(a: torch.Tensor, b: torch.Tensor):
        def hook(module, inputs, output):
            x = inputs[0]
            # index_select, not a[rows]: its backward is one index_add, where advanced indexing's
            # accumulating index_put was 6% of a training step
            aa, bb = (a, b) if rows is None else (a.index_select(0, rows), b.index_select(0, rows))
            h = torch.bmm(x.to(aa.dtype), aa.transpose(1, 2))
            return output + torch.bmm(h, bb.transpose(1, 2)).to(output.dtype)
        return hook

    try:
        for m, (fa, fb) in factors.items():
            for i in range(layout.num_layers):
                lin = mods[layout.module_name(m, i)]
                handles.append(lin.register_forward_hook(hook_for(fa[:, i], fb[:, i])))
        yield edge
    finally:
        for h in handles:
            h.remove()
