"""The DiNA operator: 2-D (dilated) neighbourhood attention with relative positional bias."""
from .cpu_kernels import na2d_cpu
from .functional import na2d, select_backend
from .gather import na2d_gather
from .tiled import na2d_tiled

__all__ = ['na2d', 'na2d_cpu', 'na2d_gather', 'na2d_tiled', 'select_backend']
