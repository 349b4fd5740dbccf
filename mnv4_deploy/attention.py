"""`nn.MultiheadAttention` rewritten as the explicit ops every exporter and the int8 engine see.

PyTorch's module packs q/k/v into one `in_proj_weight` and calls a fused kernel (or, in
eval mode, `torch._native_multi_head_attention`): torch.fx traces it as a single opaque call,
so the int8 plan could neither quantize its weights nor place quantizers inside it, and
full-integer converters would see different tensors than the plan. `ExplicitMultiheadAttention`
computes the same function with three `nn.Linear` projections, per-head `matmul`/`softmax`,
and the output projection, like the explicit form timm attention is switched to.
"""
from __future__ import annotations

import torch
from torch import nn

from .errors import UsageError


class ExplicitMultiheadAttention(nn.Module):
    """softmax(q k^T / sqrt(d)) v per head, from an `nn.MultiheadAttention`'s weights (no masks)."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        self.heads = mha.num_heads
        self.head_dim = mha.head_dim
        self.batch_first = mha.batch_first
        self.scale = float(self.head_dim) ** -0.5
        e = mha.embed_dim
        if mha._qkv_same_embed_dim:
            weights = mha.in_proj_weight.detach().split(e, dim=0)
        else:
            weights = (mha.q_proj_weight.detach(), mha.k_proj_weight.detach(), mha.v_proj_weight.detach())
        biases = mha.in_proj_bias.detach().split(e) if mha.in_proj_bias is not None else (None,) * 3
        self.q, self.k, self.v = (self._linear(w, b) for w, b in zip(weights, biases))
        self.out_proj = self._linear(mha.out_proj.weight.detach(),
                                     mha.out_proj.bias.detach() if mha.out_proj.bias is not None else None)

    @staticmethod
    def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if bias is not None:
                linear.bias.copy_(bias)
        return linear

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, heads, N, d)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask=None,
                need_weights: bool = True, attn_mask=None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if key_padding_mask is not None or attn_mask is not None or is_causal:
            raise UsageError("nn.MultiheadAttention called with a mask: the explicit export form has none",
                             "export the attention without key_padding_mask/attn_mask/is_causal")
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        q, k, v = self._heads(self.q(query)), self._heads(self.k(key)), self._heads(self.v(value))
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)  # (B, heads, Nq, Nk)
        b, _, n, _ = q.shape
        out = self.out_proj((attn @ v).transpose(1, 2).reshape(b, n, self.heads * self.head_dim))
        if not self.batch_first:
            out = out.transpose(0, 1)
        if not need_weights:
            return out, None
        return out, attn.mean(dim=1) if average_attn_weights else attn


def _check_supported(name: str, mha: nn.MultiheadAttention) -> None:
    if mha.bias_k is not None or mha.add_zero_attn:
        raise UsageError(f"{name}: nn.MultiheadAttention with add_bias_kv/add_zero_attn has no explicit export form",
                         "build the attention without add_bias_kv and add_zero_attn")


def decompose_multihead_attention(model: nn.Module) -> int:
    """Replace every `nn.MultiheadAttention` in `model` (in place); return how many."""
    found = [(n, m) for n, m in model.named_modules() if n and isinstance(m, nn.MultiheadAttention)]
    for name, mha in found:
        _check_supported(name, mha)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, ExplicitMultiheadAttention(mha))
    return len(found)
