# Mask2Former + DiNAT-Large (ImageNet-22k weights), COCO panoptic, large-scale jittering at
# 1024, 737,500 iterations (paper: PQ 58.5). The reference (SHI-Labs/Neighborhood-Attention-
# Transformer, mask2former/configs/coco/panoptic-segmentation/dinat/) trained
# facebookresearch/Mask2Former's Swin-L recipe with DiNAT swapped in, so this config inherits
# mmdet's Swin-L one, which already has that recipe: 200 queries, AdamW lr 1e-4, wd 0.05,
# backbone lr x0.1, full-model gradient-norm clipping 0.01, steps at 655,556 and 710,184, no
# fp16, 16 GPUs x 1 image (batch 16). Only the backbone and the decay rules differ.
_base_ = [
    'mmdet::mask2former/mask2former_swin-l-p4-w12-384-in21k_16xb1-lsj-100e_coco-panoptic.py',
    '../../_base_/mask2former_dinat-l-in22k.py'
]
custom_imports = dict(imports=['dinat_backbone'], allow_failed_imports=False)
# mmengine's CheckpointHook, with saves that survive a kill (dinat_backbone.engine.checkpoint_hook)
default_hooks = dict(checkpoint=dict(type='CrashSafeCheckpointHook'))

# DiNAT-L and the reference's decay rules (../../_base_/mask2former_dinat-l-in22k.py), and the
# Swin-L config's variables set to DiNAT-L's.
pretrained = {{_base_.dinat_l_pretrained}}
depths = {{_base_.dinat_l_depths}}
backbone_norm_multi = {{_base_.dinat_l_backbone_norm_multi}}
embed_multi = {{_base_.dinat_l_embed_multi}}
model = dict(
    backbone={{_base_.dinat_l_backbone}},
    panoptic_head=dict(in_channels={{_base_.dinat_l_out_channels}}))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={{_base_.dinat_l_custom_keys}}))
