"""Window arithmetic of one axis: which keys each query attends to (see functional.py for the
semantics). Everything is a tensor op on ``arange(length)``, so it also traces for export."""
from typing import NamedTuple, Tuple

import torch


def axis_neighbours(length: int, kernel: int, dilation: int, device: torch.device
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per query of one axis, its ``kernel`` key positions and their rpb indices, ``[L, k]``."""
    i = torch.arange(length, device=device)
    group, pos = i % dilation, i // dilation
    group_len = (length - group + dilation - 1) // dilation
    start = torch.minimum((pos - kernel // 2).clamp(min=0), group_len - kernel)
    window = start[:, None] + torch.arange(kernel, device=device)
    return group[:, None] + dilation * window, window - pos[:, None] + kernel - 1


class AxisNeighbours(NamedTuple):
    """Neighbour tables of one axis (the CPU kernels' inputs), ``int64``, contiguous."""
    keys: torch.Tensor  # [L, k] key position of each query's neighbours
    bias: torch.Tensor  # [L, k] their rpb index, 0 .. 2k-2
