"""Export-friendly decoder wrappers shared by every backend, plus the PyTorch reference.

Both wrappers reuse the Hugging Face modules of a llama/gemma ``*ForCausalLM`` (embedding with
Gemma's scaling, RMSNorms, rotary embedding, MLP, projections) and re-implement only the attention
glue, so that the KV cache has a form each runtime handles:

* :class:`StaticCacheLM` - a fixed ``[1, kv_heads, max_context, head_dim]`` buffer per layer for keys
  and values, written in place at ``cache_position`` (ExecuTorch mutable buffers).
  ``forward(input_ids[1, s], cache_position[s]) -> logits[1, 1, vocab]``; one method serves both
  prefill (``s > 1``) and decode (``s == 1``).
* :class:`StatefulCoreMLLM` - the Core ML stateful contract of swift-transformers / Apple's Core ML
  Llama example: ``forward(inputIds[1, q], causalMask[1, 1, q, end]) -> logits[1, 1, vocab]`` with
  the cache in two buffers ``keyCache``/``valueCache`` ``[layers, 1, kv_heads, max_context, head_dim]``
  (Core ML states); the new tokens sit at positions ``end - q .. end - 1``.
* :class:`PastKVLM` - the onnxruntime-genai / optimum convention: ``past_key_values.{i}.key/value``
  in, ``present.{i}.key/value`` (past concatenated with the new keys/values) out.

Every wrapper returns the logits of the last position only (``[1, 1, vocab]``), which is all greedy
decoding and sampling need; ``all_logits=True`` returns every position (``[1, s, vocab]``), e.g. for
scoring a whole sequence.

The wrappers keep the Hugging Face attribute names (``model``, ``lm_head``), so parameter names in
the exported graphs are exactly the HF names (``model.layers.0.mlp.up_proj.weight``).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import LoragenError


def _dims(config) -> tuple[int, int, int, int]:
    n_heads = config.num_attention_heads
    n_kv = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return config.num_hidden_layers, n_heads, n_kv, head_dim


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


class _DecoderBase(nn.Module):
    def __init__(self, hf_model, all_logits: bool = False):
        super().__init__()
        self.all_logits = bool(all_logits)
        cfg = hf_model.config
        if cfg.model_type not in ("llama", "gemma"):
            raise LoragenError(f"cannot export model_type '{cfg.model_type}'; supported: llama, gemma")
        self.model = hf_model.model
        self.lm_head = hf_model.lm_head
        self.n_layers, self.n_heads, self.n_kv, self.head_dim = _dims(cfg)
        self.scaling = self.head_dim ** -0.5
        act = getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", None)
        self.tanh_gelu = act in ("gelu_pytorch_tanh", "gelu_tanh")
        if act not in ("silu", "gelu_pytorch_tanh", "gelu_tanh"):
            raise LoragenError(f"cannot export activation '{act}'; supported: silu, gelu_pytorch_tanh")

    def _qkv(self, i: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        attn = self.model.layers[i].self_attn
        b, s, _ = x.shape
        q = attn.q_proj(x).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(b, s, self.n_kv, self.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(b, s, self.n_kv, self.head_dim).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        return q, k, v

    def _attend(self, i: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor):
        rep = self.n_heads // self.n_kv
        b, _, s, _ = q.shape
        t = k.shape[2]
        if rep > 1:
            k = k[:, :, None].expand(b, self.n_kv, rep, t, self.head_dim).reshape(b, self.n_heads, t, self.head_dim)
            v = v[:, :, None].expand(b, self.n_kv, rep, t, self.head_dim).reshape(b, self.n_heads, t, self.head_dim)
        w = torch.matmul(q, k.transpose(2, 3)) * self.scaling + mask
        w = torch.softmax(w.float(), dim=-1).to(q.dtype)
        o = torch.matmul(w, v).transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim)
        return self.model.layers[i].self_attn.o_proj(o)

    def _mlp(self, i: int, h: torch.Tensor) -> torch.Tensor:
        layer = self.model.layers[i]
        x = layer.post_attention_layernorm(h)
        if not self.tanh_gelu:
            return h + layer.mlp(x)
        # gelu(approximate="tanh") written out: ExecuTorch 1.5.1's XNNPACK delegate lowers every
        # aten.gelu as the exact erf GELU (it ignores `approximate`), a ~1e-3 logits error for Gemma.
        mlp = layer.mlp
        g = mlp.gate_proj(x)
        act = 0.5 * g * (1.0 + torch.tanh(0.7978845608028654 * (g + 0.044715 * g * g * g)))
        return h + mlp.down_proj(act * mlp.up_proj(x))

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head on the last position (``[1, 1, vocab]``) or, with ``all_logits``, on all."""
        if not self.all_logits:
            h = h[:, -1:, :]
        return self.lm_head(self.model.norm(h))

    @staticmethod
    def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        zero = torch.zeros((), dtype=dtype)
        neg = torch.full((), torch.finfo(dtype).min, dtype=dtype)
        return torch.where(allowed, zero, neg)[None, None]


class StaticCacheLM(_DecoderBase):
    """Decoder with a static in-place KV cache (buffers ``k_cache_{i}``/``v_cache_{i}``)."""

    def __init__(self, hf_model, max_context: int, update: str = "index_copy", all_logits: bool = False):
        super().__init__(hf_model, all_logits)
        self.max_context = int(max_context)
        # "index_copy": in-place index_copy_ (ExecuTorch); "onehot": cache * keep + onehot^T @ new,
        # assigned back with copy_ (only matmul/elementwise ops, for converters without index_copy).
        self.update = update
        dtype = hf_model.lm_head.weight.dtype
        for i in range(self.n_layers):
            shape = (1, self.n_kv, self.max_context, self.head_dim)
            self.register_buffer(f"k_cache_{i}", torch.zeros(shape, dtype=dtype), persistent=False)
            self.register_buffer(f"v_cache_{i}", torch.zeros(shape, dtype=dtype), persistent=False)

    def forward(self, input_ids: torch.Tensor, cache_position: torch.Tensor) -> torch.Tensor:
        h = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary_emb(h, cache_position.unsqueeze(0))
        keys = torch.arange(self.max_context, dtype=cache_position.dtype)
        mask = self._additive(keys[None, :] <= cache_position[:, None], h.dtype)
        if self.update != "index_copy":
            hit = (keys[:, None] == cache_position[None, :]).to(h.dtype)  # [T, s]
            onehot_t = hit[None, None]
            keep = (1 - hit.sum(dim=1))[None, None, :, None]
        for i in range(self.n_layers):
            layer = self.model.layers[i]
            q, k, v = self._qkv(i, layer.input_layernorm(h), cos, sin)
            kc, vc = getattr(self, f"k_cache_{i}"), getattr(self, f"v_cache_{i}")
            if self.update == "index_copy":
                kc.index_copy_(2, cache_position, k)
                vc.index_copy_(2, cache_position, v)
            else:
                kc.copy_(kc * keep + torch.matmul(onehot_t, k))
                vc.copy_(vc * keep + torch.matmul(onehot_t, v))
            h = h + self._attend(i, q, kc, vc, mask)
            h = self._mlp(i, h)
        return self._logits(h)


class StatefulCoreMLLM(_DecoderBase):
    """Decoder in the Core ML stateful-LLM convention (swift-transformers ``LanguageModel``).

    ``forward(inputIds[1, q], causalMask[1, 1, q, end])``: ``causalMask`` is additive (0 = attend,
    -inf = do not) over the ``end`` cache positions ``0 .. end - 1``; the ``q`` new tokens take
    positions ``end - q .. end - 1`` (so the model needs no position input), and keys after a
    token's own position are masked whatever ``causalMask`` holds. Keys and values of all
    layers live in two buffers ``keyCache``/``valueCache`` ``[layers, 1, kv_heads, max_context,
    head_dim]``, which the converter turns into Core ML states. The cache is written with
    ``cache * keep + onehot^T @ new`` and ``copy_`` (matmul/elementwise only; Core ML has no
    ``index_copy``).
    """

    def __init__(self, hf_model, max_context: int, all_logits: bool = False):
        super().__init__(hf_model, all_logits)
        self.max_context = int(max_context)
        dtype = hf_model.lm_head.weight.dtype
        shape = (self.n_layers, 1, self.n_kv, self.max_context, self.head_dim)
        self.register_buffer("keyCache", torch.zeros(shape, dtype=dtype), persistent=False)
        self.register_buffer("valueCache", torch.zeros(shape, dtype=dtype), persistent=False)

    def forward(self, inputIds: torch.Tensor, causalMask: torch.Tensor) -> torch.Tensor:  # noqa: N803
        q_len, end = inputIds.shape[-1], causalMask.shape[-1]
        positions = torch.arange(end - q_len, end, dtype=torch.long)
        h = self.model.embed_tokens(inputIds)
        cos, sin = self.model.rotary_emb(h, positions.unsqueeze(0))
        keys = torch.arange(self.max_context, dtype=torch.long)
        hit = (keys[:, None] == positions[None, :]).to(h.dtype)  # [T, q]
        onehot_t = hit[None, None]
        keep = (1 - hit.sum(dim=1))[None, None, :, None]
        # Attend over the whole static cache (slicing or padding to the dynamic `end` makes torch.export
        # specialise on end == max_context): the mask is moved onto the max_context key positions with a
        # one-hot matmul (finite values only: -inf * 0 would be NaN, so the mask is clamped to fp16's
        # minimum, which stays finite when Core ML computes in fp16), and key positions after each
        # query's own position are masked as well.
        neg = torch.finfo(torch.float16).min
        spread = (torch.arange(end, dtype=torch.long)[:, None] == keys[None, :]).to(h.dtype)  # [end, T]
        user = torch.matmul(causalMask.to(h.dtype).clamp(min=neg), spread)  # [1, 1, q, T]
        mask = torch.where(keys[None, :] <= positions[:, None], user, torch.full((), neg, dtype=h.dtype))
        new_k, new_v = [], []
        for i in range(self.n_layers):
            layer = self.model.layers[i]
            q, k, v = self._qkv(i, layer.input_layernorm(h), cos, sin)
            kc = self.keyCache[i] * keep + torch.matmul(onehot_t, k)
            vc = self.valueCache[i] * keep + torch.matmul(onehot_t, v)
            new_k.append(kc)
            new_v.append(vc)
            h = h + self._attend(i, q, kc, vc, mask)
            h = self._mlp(i, h)
        self.keyCache.copy_(torch.stack(new_k))
        self.valueCache.copy_(torch.stack(new_v))
        return self._logits(h)

    @staticmethod
    def causal_mask(q_len: int, end: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The ``[1, 1, q, end]`` additive mask for ``q`` new tokens after ``end - q`` cached ones."""
        past = end - q_len
        allowed = torch.arange(end)[None, :] <= (past + torch.arange(q_len))[:, None]
        return torch.where(allowed, 0.0, float("-inf")).to(dtype)[None, None]


class PastKVLM(_DecoderBase):
    """Decoder in the onnxruntime-genai convention (past in, present = past ++ new out)."""

    def forward(self, input_ids, attention_mask, position_ids, past: list[torch.Tensor]):
        h = self.model.embed_tokens(input_ids)
        cos, sin = self.model.rotary_emb(h, position_ids)
        total = attention_mask.shape[1]
        keys = torch.arange(total, dtype=position_ids.dtype)
        allowed = (keys[None, :] <= position_ids[0][:, None]) & (attention_mask[0][None, :] > 0)
        mask = self._additive(allowed, h.dtype)
        present = []
        for i in range(self.n_layers):
            layer = self.model.layers[i]
            q, k, v = self._qkv(i, layer.input_layernorm(h), cos, sin)
            k = torch.cat([past[2 * i], k], dim=2)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            present += [k, v]
            h = h + self._attend(i, q, k, v, mask)
            h = self._mlp(i, h)
        return (self._logits(h), *present)


class Reference:
    """Eager PyTorch greedy decoding with the HF model and its own cache (the ground truth)."""

    def __init__(self, hf_model):
        self.model = hf_model
        self.reset()

    def reset(self):
        from transformers import DynamicCache

        self.cache = DynamicCache(config=self.model.config)

    @torch.no_grad()
    def step(self, ids: list[int]) -> torch.Tensor:
        """Feed tokens; returns logits ``[len(ids), vocab]`` (float32)."""
        x = torch.tensor([ids], dtype=torch.long)
        out = self.model(input_ids=x, cache=self.cache, use_cache=True)
        return out.logits[0].float()

    def generate(self, ids: list[int], max_new_tokens: int) -> list[int]:
        self.reset()
        logits = self.step(list(ids))
        toks: list[int] = []
        for _ in range(max_new_tokens):
            t = int(logits[-1].argmax())
            toks.append(t)
            if len(toks) == max_new_tokens:
                break
            logits = self.step([t])
        return toks
