"""The softmax step shared by the implementations that materialise the logits."""
import torch
import torch.nn.functional as F


def attention_weights(logits: torch.Tensor, dtype: torch.dtype, attn_drop: float) -> torch.Tensor:
    """Softmax over the last axis, cast to ``dtype``, then attention dropout."""
    # In float32 for half-precision inputs: the -inf mask and long rows need the range.
    softmax_dtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else None
    attn = logits.softmax(-1, dtype=softmax_dtype).to(dtype)
    if attn_drop > 0.0:
        attn = F.dropout(attn, p=attn_drop)
    return attn
