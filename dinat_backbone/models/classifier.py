"""DiNAT as an ImageNet classifier, to run the published classification checkpoints whole."""
import re
from typing import Any, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
from .._openmmlab import BaseModule, print_log, trunc_normal_
from ..weights import (CheckpointKeyError, CheckpointReport, adapt_state_dict, convert_to_reference,
                       read_checkpoint)
from .backbone import DiNAT

__all__ = ['DiNATClassifier']


class DiNATClassifier(BaseModule):
    """DiNAT image classifier: backbone, final LayerNorm, global average pooling, linear head.

    The same computation as the reference classifier. Its final ``norm`` (a LayerNorm on the last
    level) is the backbone's output norm of that level, ``backbone.norm3``, so the backbone is
    exactly the dense-prediction one with ``out_indices=(3,)``; the reference ``norm.*`` and
    ``head.*`` load into ``backbone.norm3.*`` and ``head.*``.

    Args:
        arch (str | dict): As for :class:`DiNAT`. Default: ``'tiny'``.
        num_classes (int): Classes of the head; 0 gives pooled features. Default: 1000.
        kernel_size (int): Neighbourhood size. Default: 7.
        dilations (str | Sequence[Sequence[int]]): As for :class:`DiNAT`; ``'imagenet'`` for the
            224 models, ``'imagenet-384'`` for Large 384 with a 7x7 kernel. Default:
            ``'imagenet'``.
        drop_path_rate (float): Stochastic depth. Default: 0.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=...)`` loads a whole
            published classifier (original or Hugging Face layout, path, URL or zoo name).
        **backbone_kwargs: Further :class:`DiNAT` arguments (not ``out_indices``).
    """

    def __init__(self,
                 arch: Union[str, dict] = 'tiny',
                 num_classes: int = 1000,
                 kernel_size: int = 7,
                 dilations: Union[str, Sequence[Sequence[int]]] = 'imagenet',
                 drop_path_rate: float = 0.,
                 init_cfg: Optional[dict] = None,
                 **backbone_kwargs: Any) -> None:
        super().__init__(init_cfg=init_cfg)
        if 'out_indices' in backbone_kwargs:
            raise TypeError('DiNATClassifier always uses the last level; do not pass out_indices.')
        last = len(DiNAT._resolve_arch(arch)['depths']) - 1
        self.last_level = last
        self.backbone = DiNAT(arch=arch, kernel_size=kernel_size, dilations=dilations,
                              drop_path_rate=drop_path_rate, out_indices=(last, ),
                              **backbone_kwargs)
        self.num_features = self.backbone.num_features[last]
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 \
            else nn.Identity()

    def init_weights(self) -> None:
        if self.init_cfg is not None and self.init_cfg.get('type') == 'Pretrained':
            self.load_checkpoint(self.init_cfg['checkpoint'])
        else:
            self.backbone.init_weights()
            if isinstance(self.head, nn.Linear):
                trunc_normal_(self.head.weight, std=.02)
                nn.init.zeros_(self.head.bias)
        self._is_init = True

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> pooled, normalised features ``[B, num_features]``."""
        return self.backbone(x)[0].mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` -> logits ``[B, num_classes]``."""
        return self.head(self.forward_features(x))

    def load_checkpoint(self, filename: Union[str, Mapping[str, Any]],
                        logger: Union[Any, str, None] = None,
                        trusted: bool = False) -> CheckpointReport:
        """Load a whole published classifier (backbone, final norm and head), strictly.

        ``filename`` is a path, URL, zoo name, or a checkpoint already read. ``trusted=True``
        unpickles a file fully, running any code it contains (see
        :func:`~dinat_backbone.weights.read_checkpoint`).

        Raises:
            CheckpointKeyError: the checkpoint has no classifier (a backbone or task checkpoint),
                or missing/unexpected keys.
            ValueError: a different variant, or a head with a different number of classes.
            UnsafeCheckpointError: the file needs unpickling beyond the allow-list.
        """
        checkpoint = read_checkpoint(filename, trusted) if isinstance(filename, str) \
            else filename
        state_dict, report = convert_to_reference(checkpoint)
        report.source = filename if isinstance(filename, str) else None
        # Output norms of a dense-prediction backbone (HF DinatBackbone's stage norms) are not
        # the classifier's final norm: refuse them rather than let them stand in for it.
        output_norms = sorted(k for k in state_dict if re.match(r'^norm\d+\.', k))
        if output_norms:
            source = report.source or 'The checkpoint'
            raise CheckpointKeyError(f'{source} holds the output norms of a dense-prediction '
                                     f'backbone ({output_norms}); a classifier checkpoint has '
                                     'only the final norm.* and head.*.')
        norm = f'norm{self.last_level}.'
        head = {k[len('head.'):]: v for k, v in state_dict.items() if k.startswith('head.')}
        backbone = {(norm + k[len('norm.'):] if k.startswith('norm.') else k): v
                    for k, v in state_dict.items() if not k.startswith('head.')}
        if isinstance(self.head, nn.Linear):
            absent = [f'head.{p}' for p in ('weight', 'bias') if p not in head]
            if 'norm.weight' not in state_dict:
                absent.append('norm.*')
            if absent:
                source = report.source or 'The checkpoint'
                raise CheckpointKeyError(
                    f'{source} is not a whole classifier ({report.layout} layout): no '
                    f'{", ".join(absent)}. Load backbone-only checkpoints into DiNAT instead.')
        elif head:
            report.dropped_classifier += [f'head.{k}' for k in head]
            head = {}
        backbone, report = adapt_state_dict(backbone, self.backbone, report)
        if head and head['weight'].shape != self.head.weight.shape:
            raise ValueError(
                f'{report.source or "Checkpoint"}: its head has {head["weight"].shape[0]} '
                f'classes and {head["weight"].shape[1]} features, the model '
                f'{self.num_classes} and {self.num_features}; set num_classes (ImageNet-22k '
                'heads have 21841).')
        self.backbone.load_state_dict(backbone, strict=True)
        if head:
            self.head.load_state_dict(head, strict=True)
            report.loaded += [f'head.{k}' for k in head]
        print_log(report.summary(), logger=logger if logger is not None else 'current')
        return report
