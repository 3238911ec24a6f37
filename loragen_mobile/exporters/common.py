"""Export-friendly decoder wrappers shared by every backend, plus the PyTorch reference.

The wrappers reuse the Hugging Face modules of a ``*ForCausalLM`` of any supported family
(:mod:`loragen_mobile.families`: embedding with Gemma's scaling, RMSNorms, q/k norms, rotary
embeddings incl. Llama-3 scaling and Gemma-3's per-layer-type tables, MLP, projections with their
biases) and re-implement only the attention glue (scale, soft-capping, causal and sliding-window
masks), the Gemma-2/3 sandwich norms and the final logit soft-capping, so that the KV cache has a
form each runtime handles:

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
from ..families import family_of


def _dims(config) -> tuple[int, int, int, int]:
    n_heads = config.num_attention_heads
    n_kv = config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    return config.num_hidden_layers, n_heads, n_kv, head_dim


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def _softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    return torch.tanh(x / cap) * cap


class _DecoderBase(nn.Module):
    """What every wrapper shares: the family's features, read from the loaded HF modules.

    Per layer: the attention scale (``self_attn.scaling``), the sliding window (``self_attn.sliding_window``,
    ``None`` on global layers), the attention soft-cap (``self_attn.attn_logit_softcapping`` where the
    family applies it) and the rotary table (``config.layer_types[i]`` where the family has one per layer
    type). Sliding-window layers change only the mask (key position > query position - window); the
    cache stays full size. A model whose modules disagree with its family's declared features is refused.
    """

    def __init__(self, hf_model, all_logits: bool = False):
        super().__init__()
        self.all_logits = bool(all_logits)
        cfg = hf_model.config
        fam = family_of(cfg)
        fam.check_config(cfg)
        self.model = hf_model.model
        self.lm_head = hf_model.lm_head
        self.n_layers, self.n_heads, self.n_kv, self.head_dim = _dims(cfg)
        self.tanh_gelu = fam.activation(cfg) in ("gelu_pytorch_tanh", "gelu_tanh")
        feat = fam.attention

        def refuse(what: str):
            raise LoragenError(f"cannot export this {cfg.model_type} model: {what}", code="model")

        layers = self.model.layers
        self.qk_norm = feat.qk_norm
        self.sandwich = fam.sandwich_norm
        self.scaling: list[float] = []
        self.window: list[int | None] = []
        self.attn_softcap: list[float | None] = []
        self.rope_key: list[str | None] = []
        if isinstance(feat.qkv_bias, str):
            want_bias = bool(getattr(cfg, feat.qkv_bias, False))
        else:
            want_bias = bool(feat.qkv_bias)
        per_layer_rope = hasattr(self.model.rotary_emb, "layer_types")
        if per_layer_rope != feat.per_layer_rope:
            refuse(f"per-layer-type rotary tables {'present' if per_layer_rope else 'missing'}, "
                   f"the {fam.model_type} family declares {feat.per_layer_rope}")
        for i in range(self.n_layers):
            layer, attn = layers[i], layers[i].self_attn
            for name in ("q_proj", "k_proj", "v_proj"):
                if (getattr(attn, name).bias is not None) != want_bias:
                    refuse(f"layer {i} {name} bias {'present' if not want_bias else 'missing'}")
            has_norm = hasattr(attn, "q_norm") and hasattr(attn, "k_norm")
            if has_norm != feat.qk_norm:
                refuse(f"layer {i} q/k norm {'present' if has_norm else 'missing'}")
            has_sandwich = hasattr(layer, "pre_feedforward_layernorm") and hasattr(layer, "post_feedforward_layernorm")
            if has_sandwich != fam.sandwich_norm:
                refuse(f"layer {i} pre/post feed-forward norms {'present' if has_sandwich else 'missing'}")
            scaling = getattr(attn, "scaling", None)
            scalar = self.head_dim if feat.scale == "head_dim" else getattr(cfg, feat.scale, None)
            if scaling is None or scalar is None or abs(float(scaling) - float(scalar) ** -0.5) > 1e-12:
                refuse(f"layer {i} attention scale {scaling} is not {feat.scale} ** -0.5")
            self.scaling.append(float(scaling))
            window = getattr(attn, "sliding_window", None)
            if window is not None and not feat.sliding_window:
                refuse(f"layer {i} has a sliding window ({window}), the family has none")
            if window is not None and (not isinstance(window, int) or window < 1):
                refuse(f"layer {i} sliding window {window!r} is not a positive integer")
            self.window.append(window)
            cap = None
            if feat.logit_softcap:
                if not hasattr(attn, "attn_logit_softcapping"):
                    refuse(f"layer {i} has no attn_logit_softcapping")
                cap = attn.attn_logit_softcapping
            self.attn_softcap.append(float(cap) if cap is not None else None)
            self.rope_key.append(cfg.layer_types[i] if per_layer_rope else None)
        final_cap = getattr(cfg, "final_logit_softcapping", None)
        if final_cap is not None and not fam.final_logit_softcap:
            refuse("final_logit_softcapping is set, the family has none")
        self.final_softcap = float(final_cap) if final_cap is not None else None

    def _ropes(self, h: torch.Tensor, positions: torch.Tensor) -> dict:
        """cos/sin per rotary table (one, or one per layer type)."""
        rot = self.model.rotary_emb
        return {key: (rot(h, positions) if key is None else rot(h, positions, key))
                for key in dict.fromkeys(self.rope_key)}

    def _masks(self, mask: torch.Tensor, q_pos: torch.Tensor, k_pos: torch.Tensor, neg: torch.Tensor) -> dict:
        """Mask per window (``None``: the causal ``mask``); a sliding layer also masks (with ``neg``) keys
        at or before ``query position - window`` (transformers' ``sliding_window_overlay``). Written
        with ``torch.where`` on the causal mask, no boolean ``&`` (coremltools has no converter for it)."""
        masks = {None: mask}
        for w in dict.fromkeys(self.window):
            if w is not None:
                masks[w] = torch.where((k_pos[None, :] > q_pos[:, None] - w)[None, None], mask, neg)
        return masks

    def _qkv(self, i: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        attn = self.model.layers[i].self_attn
        b, s, _ = x.shape
        q = attn.q_proj(x).view(b, s, self.n_heads, self.head_dim)
        k = attn.k_proj(x).view(b, s, self.n_kv, self.head_dim)
        if self.qk_norm:  # RMSNorm over head_dim, before RoPE
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
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
        cap = self.attn_softcap[i]
        if cap is None:
            w = torch.matmul(q, k.transpose(2, 3)) * self.scaling[i] + mask
        else:
            w = _softcap(torch.matmul(q, k.transpose(2, 3)) * self.scaling[i], cap) + mask
        w = torch.softmax(w.float(), dim=-1).to(q.dtype)
        o = torch.matmul(w, v).transpose(1, 2).reshape(b, s, self.n_heads * self.head_dim)
        return self.model.layers[i].self_attn.o_proj(o)

    def _layer(self, i: int, h: torch.Tensor, q, k, v, mask) -> torch.Tensor:
        """The rest of decoder layer ``i`` once q/k/v are known: attention residual, then the FFN."""
        a = self._attend(i, q, k, v, mask)
        if self.sandwich:  # Gemma-2/3: norm the attention output before the residual
            a = self.model.layers[i].post_attention_layernorm(a)
        return self._mlp(i, h + a)

    def _mlp(self, i: int, h: torch.Tensor) -> torch.Tensor:
        layer = self.model.layers[i]
        x = (layer.pre_feedforward_layernorm if self.sandwich else layer.post_attention_layernorm)(h)
        if not self.tanh_gelu:
            out = layer.mlp(x)
        else:
            # gelu(approximate="tanh") written out: ExecuTorch 1.5.1's XNNPACK delegate lowers every
            # aten.gelu as the exact erf GELU (it ignores `approximate`), a ~1e-3 logits error for Gemma.
            mlp = layer.mlp
            g = mlp.gate_proj(x)
            act = 0.5 * g * (1.0 + torch.tanh(0.7978845608028654 * (g + 0.044715 * g * g * g)))
            out = mlp.down_proj(act * mlp.up_proj(x))
        if self.sandwich:
            out = layer.post_feedforward_layernorm(out)
        return h + out

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head on the last position (``[1, 1, vocab]``) or, with ``all_logits``, on all;
        soft-capped where the model says so (Gemma-2/3)."""
        if not self.all_logits:
            h = h[:, -1:, :]
        logits = self.lm_head(self.model.norm(h))
        if self.final_softcap is not None:
            logits = _softcap(logits, self.final_softcap)
        return logits

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
        ropes = self._ropes(h, cache_position.unsqueeze(0))
        keys = torch.arange(self.max_context, dtype=cache_position.dtype)
        masks = self._masks(self._additive(keys[None, :] <= cache_position[:, None], h.dtype), cache_position, keys,
                            torch.full((), torch.finfo(h.dtype).min, dtype=h.dtype))
        if self.update != "index_copy":
            hit = (keys[:, None] == cache_position[None, :]).to(h.dtype)  # [T, s]
            onehot_t = hit[None, None]
            keep = (1 - hit.sum(dim=1))[None, None, :, None]
        for i in range(self.n_layers):
            layer = self.model.layers[i]
            q, k, v = self._qkv(i, layer.input_layernorm(h), *ropes[self.rope_key[i]])
            kc, vc = getattr(self, f"k_cache_{i}"), getattr(self, f"v_cache_{i}")
            if self.update == "index_copy":
                kc.index_copy_(2, cache_position, k)
                vc.index_copy_(2, cache_position, v)
            else:
                kc.copy_(kc * keep + torch.matmul(onehot_t, k))
                vc.copy_(vc * keep + torch.matmul(onehot_t, v))
            h = self._layer(i, h, q, kc, vc, masks[self.window[i]])
        return self._logits(h)


class StatefulCoreMLLM(_DecoderBase):
    """Decoder in the Core ML stateful-LLM convention (swift-transformers ``LanguageModel``).

    ``forward(inputIds[1, q], causalMask[1, 1, q, end])``: ``causalMask`` is additive (0 = attend,
    -inf = do not) over the ``end`` cache positions ``0 .. end - 1``; the ``q`` new tokens take
    positions ``end - q .. end - 1`` (so the model needs no position input), and keys after a
    token's own position are masked whatever ``causalMask`` holds (on sliding-window layers, keys at
    or before ``position - window`` as well). Keys and values of all
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
        ropes = self._ropes(h, positions.unsqueeze(0))
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
        neg_t = torch.full((), neg, dtype=h.dtype)
        masks = self._masks(torch.where(keys[None, :] <= positions[:, None], user, neg_t), positions, keys, neg_t)
        new_k, new_v = [], []
        for i in range(self.n_layers):
            layer = self.model.layers[i]
            q, k, v = self._qkv(i, layer.input_layernorm(h), *ropes[self.rope_key[i]])
            kc = self.keyCache[i] * keep + torch.matmul(onehot_t, k)
            vc = self.valueCache[i] * keep + torch.matmul(onehot_t, v)
            new_k.append(kc)
            new_v.append(vc)
            h = self._layer(i, h, q, kc, vc, masks[self.window[i]])
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
        ropes = self._ropes(h, position_ids)
        total = attention_mask.shape[1]
        keys = torch.arange(total, dtype=position_ids.dtype)
        allowed = (keys[None, :] <= position_ids[0][:, None]) & (attention_mask[0][None, :] > 0)
        masks = self._masks(self._additive(allowed, h.dtype), position_ids[0], keys,
                            torch.full((), torch.finfo(h.dtype).min, dtype=h.dtype))
        present = []
        for i in range(self.n_layers):
            layer = self.model.layers[i]
            q, k, v = self._qkv(i, layer.input_layernorm(h), *ropes[self.rope_key[i]])
            k = torch.cat([past[2 * i], k], dim=2)
            v = torch.cat([past[2 * i + 1], v], dim=2)
            present += [k, v]
            h = self._layer(i, h, q, k, v, masks[self.window[i]])
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
