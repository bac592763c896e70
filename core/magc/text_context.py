"""The empty-prompt embedding of an OpenCLIP text tower, from its weights alone.

MAGC conditions its denoiser on a fixed empty prompt, so conversion runs the text tower once
and keeps the (1, 77, width) result; decoding never loads the 354 M-parameter text encoder
and this project needs no OpenCLIP dependency.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

# open_clip.tokenize(""): start-of-text, end-of-text, then zero padding.
SOT_TOKEN, EOT_TOKEN = 49406, 49407


def _layer_norm(x: Tensor, tower: Mapping[str, Tensor], name: str) -> Tensor:
    return F.layer_norm(x, x.shape[-1:], tower[name + ".weight"].float(), tower[name + ".bias"].float(), eps=1e-5)


def _self_attention(x: Tensor, tower: Mapping[str, Tensor], name: str, heads: int, mask: Tensor) -> Tensor:
    """nn.MultiheadAttention's math from its packed in_proj weights (sequence-first order is irrelevant)."""
    batch, length, width = x.shape
    qkv = F.linear(x, tower[name + ".in_proj_weight"].float(), tower[name + ".in_proj_bias"].float())
    q, k, v = (t.reshape(batch, length, heads, width // heads).transpose(1, 2) for t in qkv.chunk(3, -1))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(batch, length, width)
    return F.linear(out, tower[name + ".out_proj.weight"].float(), tower[name + ".out_proj.bias"].float())


def empty_prompt_context(
    tower: Mapping[str, Tensor], prefix: str = "", heads: int | None = None, skip_last: int = 1,
) -> Tensor:
    """The empty-prompt embedding of an OpenCLIP text tower, as the official FrozenOpenCLIPEmbedder.

    Computed once at conversion so decoding never needs the 354 M-parameter text encoder:
    tokens [SOT, EOT, 0...], token + positional embedding, all resblocks but the last
    (``layer="penultimate"``) with the causal mask, then ``ln_final`` -> (1, 77, width).
    """
    positional = tower[prefix + "positional_embedding"].float()
    length, width = positional.shape
    heads = heads or max(1, width // 64)
    tokens = torch.tensor([SOT_TOKEN, EOT_TOKEN] + [0] * (length - 2))
    x = (tower[prefix + "token_embedding.weight"].float()[tokens] + positional).unsqueeze(0)
    blocks = sorted({int(k[len(prefix):].split(".")[2]) for k in tower if k.startswith(prefix + "transformer.resblocks.")})
    mask = torch.full((length, length), float("-inf")).triu_(1)
    with torch.no_grad():
        for i in blocks[: len(blocks) - skip_last]:
            name = f"{prefix}transformer.resblocks.{i}"
            x = x + _self_attention(_layer_norm(x, tower, name + ".ln_1"), tower, name + ".attn", heads, mask)
            hidden = F.gelu(F.linear(_layer_norm(x, tower, name + ".ln_2"), tower[name + ".mlp.c_fc.weight"].float(),
                                     tower[name + ".mlp.c_fc.bias"].float()))
            x = x + F.linear(hidden, tower[name + ".mlp.c_proj.weight"].float(), tower[name + ".mlp.c_proj.bias"].float())
        return _layer_norm(x, tower, prefix + "ln_final").contiguous()
