"""Torch-only stand-ins for the mmengine/mmcv parts in :mod:`._openmmlab`.

They cover what DiNAT itself uses: ``LN`` norms, ``GELU``, ``DropPath``, no ``init_cfg`` but
the backbone's own ``Pretrained``; anything else raises an ImportError naming mmcv or mmengine.
"""
import logging
from typing import Any, Optional, Tuple, Union

import torch
import torch.nn as nn

ModuleList = nn.ModuleList


class BaseModule(nn.Module):
    """mmengine's ``BaseModule`` without config-driven initialisation: ``init_weights``
    initialises the children."""

    def __init__(self, init_cfg: Optional[dict] = None) -> None:
        super().__init__()
        self.init_cfg = init_cfg
        self._is_init = False

    def init_weights(self) -> None:
        if self.init_cfg is not None:
            raise ImportError(f'init_cfg={self.init_cfg} needs mmengine, which is not installed.')
        for child in self.children():
            if hasattr(child, 'init_weights') and not getattr(child, '_is_init', False):
                child.init_weights()
        self._is_init = True


class DropPath(nn.Module):
    """Stochastic depth: drops the residual branch of whole samples with ``drop_prob``."""

    def __init__(self, drop_prob: float = 0.1) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0. or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0], ) + (1, ) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


def build_norm_layer(cfg: dict, num_features: int) -> Tuple[str, nn.Module]:
    """``dict(type='LN', eps=..., requires_grad=...)``; other norms need mmcv."""
    cfg = dict(cfg)
    kind, requires_grad = cfg.pop('type'), cfg.pop('requires_grad', True)
    if kind != 'LN':
        raise ImportError(f"norm type {kind!r} needs mmcv, which is not installed (without it: "
                          "'LN' only).")
    norm = nn.LayerNorm(num_features, **cfg)
    for param in norm.parameters():
        param.requires_grad = requires_grad
    return 'ln', norm


def build_activation_layer(cfg: dict) -> nn.Module:
    """``dict(type='GELU')``; other activations need mmcv."""
    if dict(cfg) != dict(type='GELU'):
        raise ImportError(f"activation {cfg} needs mmcv, which is not installed (without it: "
                          "dict(type='GELU') only).")
    return nn.GELU()


def trunc_normal_(tensor: torch.Tensor, mean: float = 0., std: float = 1., a: float = -2.,
                  b: float = 2.) -> torch.Tensor:
    return nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)


def current_logger() -> logging.Logger:
    return logging.getLogger('dinat_backbone')


def print_log(msg: str, logger: Union[Any, str, None] = None, level: int = logging.INFO) -> None:
    if logger != 'silent':
        (logger if isinstance(logger, logging.Logger) else current_logger()).log(level, msg)
