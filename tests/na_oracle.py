"""Independent oracle for neighbourhood attention, written from the published semantics
(NATTEN <= 0.17; restated in the docstring of dinat_backbone/ops/functional.py), used by the
operator and layer tests."""
import torch


def neighbours(length: int, kernel: int, dilation: int) -> list:
    """Per query index, its key indices along one axis (written from the paper's definition)."""
    result = []
    for i in range(length):
        group, pos = i % dilation, i // dilation
        group_len = len(range(group, length, dilation))
        start = min(max(pos - kernel // 2, 0), group_len - kernel)
        result.append([group + dilation * (start + t) for t in range(kernel)])
    return result


def oracle(q, k, v, kernel, dilation, rpb=None, scale=None):
    """Full attention over all H*W keys with a -inf mask outside each query's neighbourhood.
    ``kernel`` and ``dilation`` are ints or (rows, columns) pairs."""
    b, h, w, heads, dim = q.shape
    scale = dim ** -0.5 if scale is None else scale
    (kh, kw), (dh, dw) = ((t, t) if isinstance(t, int) else t for t in (kernel, dilation))
    rows = torch.tensor(neighbours(h, kh, dh))  # [h, kh]
    cols = torch.tensor(neighbours(w, kw, dw))  # [w, kw]
    y, x, ty, tx = torch.meshgrid(torch.arange(h), torch.arange(w), torch.arange(kh),
                                  torch.arange(kw), indexing='ij')
    ky, kx = rows[y, ty], cols[x, tx]
    dy, dx = (ky - y) // dh + kh - 1, (kx - x) // dw + kw - 1
    bias = torch.full((heads, h, w, h, w), float('-inf'), dtype=q.dtype)
    bias[:, y, x, ky, kx] = 0.0 if rpb is None else rpb[:, dy, dx]
    logits = torch.einsum('byxhd,bijhd->bhyxij', q * scale, k) + bias
    attn = logits.reshape(b, heads, h, w, h * w).softmax(-1).reshape(b, heads, h, w, h, w)
    return torch.einsum('bhyxij,bijhd->byxhd', attn, v)
