"""Weights: published checkpoint layouts, strict loading, the model zoo and safe file reading.

- :mod:`.layouts` / :mod:`.hf`: the ImageNet layouts (original, Hugging Face, ours) and their
  conversion to our parameter names; :mod:`.arch`: the variant a state dict holds;
- :mod:`.keys`: the one strict key comparison behind every loader;
- :mod:`.pretrained`: ImageNet weights into a backbone; :mod:`.task`: whole mmdet 2 / mmseg 0
  and detectron2 Mask2Former (:mod:`.mask2former`) task models on mmdet 3 / mmseg 1 (design
  notes: ``docs/task_checkpoints.md``);
- :mod:`.zoo`: the published checkpoints; :mod:`.safe_loading`: reading files without running
  their code; :mod:`.mmengine_loaders`: mmengine's loaders routed through it.
"""
from .arch import check_variant, infer_arch, variant_name, zoo_arch_name
from .keys import CheckpointKeyError, KeyDiff, diff_state_dict
from .layouts import (LAYOUTS, CheckpointReport, convert_to_backbone, convert_to_reference,
                      detect_layout, unwrap_checkpoint)
from .hf import convert_huggingface
from .pretrained import adapt_state_dict, load_pretrained, read_checkpoint

__all__ = [
    'CheckpointReport', 'CheckpointKeyError', 'KeyDiff', 'LAYOUTS', 'unwrap_checkpoint',
    'detect_layout', 'convert_huggingface', 'convert_to_backbone', 'convert_to_reference',
    'infer_arch', 'adapt_state_dict', 'check_variant', 'diff_state_dict', 'read_checkpoint',
    'load_pretrained', 'zoo_arch_name', 'variant_name',
]
