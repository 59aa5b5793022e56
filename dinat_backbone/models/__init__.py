"""DiNAT models, registered with the model registries of both mmdet and mmseg."""
from .attention import NeighborhoodAttention2D
from .backbone import DILATION_PRESETS, DiNAT, dilation_preset
from .blocks import ConvDownsampler, ConvTokenizer, DiNATBlock, DiNATLevel
from .classifier import DiNATClassifier

__all__ = ['DiNAT', 'DiNATClassifier', 'DiNATBlock', 'DiNATLevel', 'ConvTokenizer',
           'ConvDownsampler', 'NeighborhoodAttention2D', 'DILATION_PRESETS', 'dilation_preset']
