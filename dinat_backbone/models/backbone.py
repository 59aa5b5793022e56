"""DiNAT: Dilated Neighborhood Attention Transformer backbone for dense prediction.

Paper: "Dilated Neighborhood Attention Transformer", Hassani & Shi, 2022
(https://arxiv.org/abs/2209.15001). Architecture and parameter names follow the reference
implementation (SHI-Labs/Neighborhood-Attention-Transformer, MIT license), so published
ImageNet checkpoints load without renaming.
"""
import numbers
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm

from .._openmmlab import BaseModule, ModuleList, build_norm_layer, current_logger, trunc_normal_
from ..ops._checks import is_int
from .blocks import ConvTokenizer, DiNATLevel

__all__ = ['DiNAT', 'check_out_indices', 'dilation_preset']

# Per level, the dilation pattern that repeats over the level's blocks (reference configs).
DILATION_PRESETS: Dict[str, Tuple[Tuple[int, ...], ...]] = {
    # ImageNet at 224 (maps 56, 28, 14, 7)
    'imagenet': ((1, 8), (1, 4), (1, 2), (1, )),
    # ImageNet at 384 (Large 384)
    'imagenet-384': ((1, 13), (1, 6), (1, 3), (1, )),
    # COCO detection / instance segmentation (Mask and Cascade Mask R-CNN)
    'coco': ((1, 28), (1, 7, 1, 14), (1, 3, 1, 5, 1, 7), (1, 3)),
    # ADE20K UPerNet at 512x512
    'ade20k': ((1, 16), (1, 4, 1, 8), (1, 2, 1, 3, 1, 4), (1, 2)),
    # ADE20K UPerNet at 640x640 (Large); level 3 is listed block by block in the reference
    'ade20k-640': ((1, 20), (1, 5, 1, 10), (1, 2, 1, 3, 1, 4, 1, 5, 1, 2, 1, 3, 1, 4, 1, 5, 1, 5),
                   (1, 2)),
    # Mask2Former (Large, kernel 11; every task and dataset of the reference); level 3 is listed
    # block by block in the reference
    'mask2former': ((1, 14), (1, 4, 1, 7), (1, 2, 1, 3, 1, 2, 1, 3, 1, 2, 1, 3, 1, 2, 1, 3, 1, 3),
                    (1, )),
}


def dilation_preset(name: str, depths: Sequence[int]) -> List[List[int]]:
    """Per-block dilations of a named preset for the given depths.

    Example:
        >>> dilation_preset('coco', [3, 4, 6, 5])
        [[1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7], [1, 3, 1, 3, 1]]
    """
    if name not in DILATION_PRESETS:
        raise ValueError(f'Unknown dilation preset {name!r}; known: {sorted(DILATION_PRESETS)}.')
    patterns = DILATION_PRESETS[name]
    if len(patterns) != len(depths):
        raise ValueError(f'Preset {name!r} has {len(patterns)} levels, got {depths=}.')
    return [[pattern[j % len(pattern)] for j in range(depth)]
            for pattern, depth in zip(patterns, depths)]


def _check_int(value: Any, name: str, minimum: int) -> int:
    """``value`` as a Python int (numpy integers accepted), else an error naming ``name``."""
    if not is_int(value):
        raise TypeError(f'{name} must be an int >= {minimum}, got {name}={value!r} '
                        f'({type(value).__name__}).')
    if value < minimum:
        raise ValueError(f'{name} must be an int >= {minimum}, got {name}={value!r}.')
    return int(value)


def _check_ints(values: Any, name: str, minimum: int) -> List[int]:
    """A list, tuple or array of ints, each checked by :func:`_check_int`."""
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, Iterable):
        raise TypeError(f'{name} must be a list of ints, got {name}={values!r}.')
    return [_check_int(v, f'{name}[{i}]', minimum) for i, v in enumerate(values)]


def _check_number(value: Any, name: str, low: float, high: Optional[float] = None,
                  allow_none: bool = False) -> Optional[float]:
    """``value`` as a float ``> low``, or in ``[low, high)`` when ``high`` is given (rates);
    bools and strings (``'2'``) are refused, None too unless ``allow_none``."""
    if value is None and allow_none:
        return None
    bounds = f'> {low}' if high is None else f'in [{low}, {high})'
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(f'{name} must be a number {bounds}, got {name}={value!r} '
                        f'({type(value).__name__}).')
    if not (value > low if high is None else low <= value < high):
        raise ValueError(f'{name} must be a number {bounds}, got {name}={value!r}.')
    return float(value)


def check_out_indices(out_indices: Sequence[int],
                      num_levels: Optional[int] = None) -> Tuple[int, ...]:
    """``out_indices`` as a tuple of ints: non-empty, strictly increasing and, when
    ``num_levels`` is given, in ``0..num_levels-1``.

    Outputs come in level order, and ``out_channels``, the strides and the exported output
    names follow ``out_indices``; only an increasing order makes them agree.
    """
    if is_int(out_indices):
        raise TypeError(f'out_indices must be a sequence of levels, e.g. ({out_indices}, ), '
                        f'got {out_indices=}.')
    indices = tuple(_check_ints(out_indices, 'out_indices', 0))
    last = '' if num_levels is None else f' of 0..{num_levels - 1}'
    if not indices or (num_levels is not None and indices[-1] >= num_levels):
        raise ValueError(f'out_indices must be a non-empty subset{last}, got {indices}.')
    if list(indices) != sorted(set(indices)):
        raise ValueError(f'out_indices must be strictly increasing (outputs come in level '
                         f'order), got {indices}; use {tuple(sorted(set(indices)))}.')
    return indices


class DiNAT(BaseModule):
    """Dilated Neighborhood Attention Transformer backbone.

    A conv tokenizer to stride 4, then 4 levels of blocks alternating local (dilation 1) and
    sparse-global (dilated) neighbourhood attention, with a 2x conv downsampler between levels.
    Returns, for each level in ``out_indices``, ``norm{i}`` of the level's output before
    downsampling as an NCHW map with ``embed_dims * 2**i`` channels at stride ``4 * 2**i``.

    Args:
        arch (str | dict): ``'mini'``, ``'tiny'``, ``'small'``, ``'base'``, ``'large'``, or a
            dict with keys ``embed_dims``, ``depths``, ``num_heads``, ``mlp_ratio`` and optionally
            ``layer_scale``. Default: ``'tiny'``.
        in_channels (int): Input image channels. Default: 3.
        kernel_size (int): Neighbourhood size of every block. Default: 7.
        dilations (str | Sequence[Sequence[int]]): Dilation of each block per level, or a preset
            name from :data:`DILATION_PRESETS` (``'imagenet'``, ``'coco'``, ``'ade20k'``, ...).
            Default: ``'imagenet'``.
        qkv_bias (bool): Bias in the qkv projections. Default: True.
        qk_scale (float, optional): Override of the query scale. Default: None.
        drop_rate (float): Dropout after the tokenizer and projections. Default: 0.
        attn_drop_rate (float): Dropout on attention weights. Default: 0.
        drop_path_rate (float): Stochastic depth, linear over all blocks up to this. Default: 0.2.
        use_rpb (bool): Relative positional bias (every published model uses it); without it,
            CUDA inputs use NATTEN's fused kernels. Default: True.
        out_indices (Sequence[int]): Levels to return, in increasing order. Default:
            (0, 1, 2, 3).
        frozen_stages (int): -1 trains everything; ``k >= 0`` freezes the tokenizer and levels
            ``0..k-1`` with their output norms (eval mode, no gradients). Default: -1.
        norm_eval (bool): Keep norm layers in eval mode while training. Default: False.
        with_cp (bool): Gradient checkpointing of every block. Default: False.
        norm_cfg (dict): Norm config (channels-last). Default: ``dict(type='LN')``.
        act_cfg (dict): MLP activation. Default: ``dict(type='GELU')``.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=PATH_OR_URL)`` loads an
            original SHI-Labs, Hugging Face or mmengine checkpoint (layout detected). Default: None.
    """
    arch_zoo = {
        'mini': dict(embed_dims=64, depths=[3, 4, 6, 5], num_heads=[2, 4, 8, 16], mlp_ratio=3.),
        'tiny': dict(embed_dims=64, depths=[3, 4, 18, 5], num_heads=[2, 4, 8, 16], mlp_ratio=3.),
        'small': dict(embed_dims=96, depths=[3, 4, 18, 5], num_heads=[3, 6, 12, 24],
                      mlp_ratio=2.),
        'base': dict(embed_dims=128, depths=[3, 4, 18, 5], num_heads=[4, 8, 16, 32],
                     mlp_ratio=2., layer_scale=1e-5),
        'large': dict(embed_dims=192, depths=[3, 4, 18, 5], num_heads=[6, 12, 24, 48],
                      mlp_ratio=2.),
    }
    _arch_keys = {'embed_dims', 'depths', 'num_heads', 'mlp_ratio'}

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 in_channels: int = 3,
                 kernel_size: int = 7,
                 dilations: Union[str, Sequence[Sequence[int]]] = 'imagenet',
                 qkv_bias: bool = True,
                 qk_scale: Optional[float] = None,
                 drop_rate: float = 0.,
                 attn_drop_rate: float = 0.,
                 drop_path_rate: float = 0.2,
                 use_rpb: bool = True,
                 out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 norm_cfg: dict = dict(type='LN'),
                 act_cfg: dict = dict(type='GELU'),
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        # Every argument is checked here, before any layer is built: a wrong type would
        # otherwise fail deep inside torch, or (mlp_ratio='2') try to allocate petabytes.
        self.arch_settings = self._resolve_arch(arch)
        embed_dims = self.arch_settings['embed_dims']
        depths = self.arch_settings['depths']
        num_heads = self.arch_settings['num_heads']
        num_levels = len(depths)
        self.dilations = self._resolve_dilations(dilations, depths)
        in_channels = _check_int(in_channels, 'in_channels', 1)
        # 0 would make every attention weight equal; None means head_dims ** -0.5.
        qk_scale = _check_number(qk_scale, 'qk_scale', 0, allow_none=True)
        for name, rate in (('drop_rate', drop_rate), ('attn_drop_rate', attn_drop_rate),
                           ('drop_path_rate', drop_path_rate)):
            _check_number(rate, name, 0, 1)
        out_indices = check_out_indices(out_indices, num_levels)
        if _check_int(frozen_stages, 'frozen_stages', -1) > num_levels:
            raise ValueError(f'frozen_stages must be in -1..{num_levels}, got {frozen_stages=}.')

        self.in_channels = in_channels
        self.kernel_size = kernel_size
        self.out_indices = out_indices
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.num_features = [embed_dims * 2**i for i in range(num_levels)]
        self.out_channels = [self.num_features[i] for i in out_indices]

        self.patch_embed = ConvTokenizer(in_channels, embed_dims, norm_cfg)
        self.pos_drop = nn.Dropout(drop_rate)
        total = sum(depths)
        rates = [drop_path_rate * j / max(total - 1, 1) for j in range(total)]  # linear
        self.levels = ModuleList()
        for i, depth in enumerate(depths):
            self.levels.append(DiNATLevel(
                self.num_features[i], depth, num_heads[i], self.dilations[i],
                drop_path_rates=rates[sum(depths[:i]):sum(depths[:i + 1])],
                downsample=i < num_levels - 1, norm_cfg=norm_cfg,
                kernel_size=kernel_size, mlp_ratio=self.arch_settings['mlp_ratio'],
                qkv_bias=qkv_bias, qk_scale=qk_scale, drop_rate=drop_rate,
                attn_drop_rate=attn_drop_rate,
                layer_scale=self.arch_settings.get('layer_scale'), use_rpb=use_rpb,
                act_cfg=act_cfg, with_cp=with_cp))
        for i in out_indices:
            self.add_module(f'norm{i}', build_norm_layer(norm_cfg, self.num_features[i])[1])
        self._freeze_stages()

    @classmethod
    def _resolve_arch(cls, arch: Union[str, dict]) -> dict:
        if isinstance(arch, str):
            if arch.lower() not in cls.arch_zoo:
                raise ValueError(f'Unknown DiNAT arch {arch!r}; choose from '
                                 f'{sorted(cls.arch_zoo)} or pass a dict.')
            arch = cls.arch_zoo[arch.lower()]
        elif not isinstance(arch, dict):
            raise TypeError(f'arch must be a str or a dict, got {type(arch).__name__}.')
        missing = cls._arch_keys - set(arch)
        unknown = set(arch) - cls._arch_keys - {'layer_scale'}
        if missing or unknown:
            raise ValueError(f'arch dict needs keys {sorted(cls._arch_keys)} (and optionally '
                             f'layer_scale); missing {sorted(missing)}, unknown {sorted(unknown)}.')
        settings = dict(
            embed_dims=_check_int(arch['embed_dims'], 'embed_dims', 1),
            depths=_check_ints(arch['depths'], 'depths', 1),
            num_heads=_check_ints(arch['num_heads'], 'num_heads', 1),
            mlp_ratio=_check_number(arch['mlp_ratio'], 'mlp_ratio', 0))
        if len(settings['num_heads']) != len(settings['depths']):
            raise ValueError('depths and num_heads need one entry per level, got '
                             f'depths={settings["depths"]}, num_heads={settings["num_heads"]}.')
        if arch.get('layer_scale') is not None:
            settings['layer_scale'] = _check_number(arch['layer_scale'], 'layer_scale', 0)
        return settings

    @staticmethod
    def _resolve_dilations(dilations: Union[str, Sequence[Sequence[int]]],
                           depths: List[int]) -> List[List[int]]:
        if isinstance(dilations, str):
            return dilation_preset(dilations, depths)
        dilations = [list(level) for level in dilations]
        if [len(level) for level in dilations] != depths:
            raise ValueError('dilations must list one dilation per block of each level, got '
                             f'lengths {[len(level) for level in dilations]} for {depths=}.')
        if any(not is_int(d) or d < 1 for level in dilations for d in level):
            raise ValueError(f'dilations must be integers >= 1, got {dilations=}.')
        return [[int(d) for d in level] for level in dilations]

    def init_weights(self) -> None:
        if self.init_cfg is not None and self.init_cfg.get('type') == 'Pretrained':
            from ..weights import load_pretrained
            load_pretrained(self, self.init_cfg['checkpoint'],
                            logger=current_logger())
            self._is_init = True
            return
        super().init_weights()
        if self.init_cfg is None:
            self.apply(self._init_module)

    @staticmethod
    def _init_module(module: nn.Module) -> None:
        # The reference initialisation for training from scratch (rpb: see the attention).
        if isinstance(module, nn.Linear):
            trunc_normal_(module.weight, std=.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def _freeze_stages(self) -> None:
        frozen: List[nn.Module] = []
        if self.frozen_stages >= 0:
            frozen += [self.patch_embed, self.pos_drop]
        for i in range(self.frozen_stages):
            frozen.append(self.levels[i])
            if i in self.out_indices:
                frozen.append(getattr(self, f'norm{i}'))
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'DiNAT':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, (_BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                    module.eval()
        return self

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """x: ``[B, in_channels, H, W]`` -> tuple of ``[B, C_i, ceil(H / s_i), ceil(W / s_i)]``."""
        if x.dim() != 4:
            raise ValueError(f'DiNAT expects images of shape [B, C, H, W], got {tuple(x.shape)}.')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'DiNAT was built for {self.in_channels} input channels, got an '
                             f'input of shape {tuple(x.shape)}.')
        weight = self.patch_embed.proj[0].weight
        if not x.is_floating_point():
            raise TypeError(f'DiNAT expects a normalised floating-point image, got dtype '
                            f'{x.dtype}: convert it first, e.g. (x.float() - mean) / std, as '
                            "mmdet's and mmseg's data preprocessors do.")
        if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f'DiNAT has {weight.dtype} weights but got a {x.dtype} input: cast '
                            f'the input (x.to({weight.dtype})) or the model, or run under '
                            'torch.autocast.')
        x = self.pos_drop(self.patch_embed(x))
        outs = []
        for i, level in enumerate(self.levels):
            level_out, x = level(x)
            if i in self.out_indices:
                out = getattr(self, f'norm{i}')(level_out)
                outs.append(out.permute(0, 3, 1, 2).contiguous())
        return tuple(outs)
