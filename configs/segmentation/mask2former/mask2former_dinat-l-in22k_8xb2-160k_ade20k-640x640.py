# Mask2Former + DiNAT-Large (ImageNet-22k weights), ADE20K semantic segmentation, 640x640
# crops, 160k iterations (paper: mIoU 58.1 multi-scale, mmseg's tta_pipeline: shortest edge
# x0.5..1.75 and flip, as the reference's TEST.AUG). The reference (SHI-Labs/Neighborhood-
# Attention-Transformer, mask2former/configs/ade20k/semantic-segmentation/dinat/) trained
# facebookresearch/Mask2Former's Swin-L recipe with DiNAT swapped in, so this config inherits
# mmseg's Swin-L one, which already has that recipe: 100 queries, AdamW lr 1e-4, wd 0.05,
# backbone lr x0.1, full-model gradient-norm clipping 0.01, poly LR (power 0.9), no fp16,
# 8 GPUs x 2 images (batch 16). The backbone, the decay rules and the crop differ.
_base_ = [
    'mmseg::mask2former/mask2former_swin-l-in22k-384x384-pre_8xb2-160k_ade20k-640x640.py',
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
    decode_head=dict(in_channels={{_base_.dinat_l_out_channels}}))
optim_wrapper = dict(paramwise_cfg=dict(custom_keys={{_base_.dinat_l_custom_keys}}))

# mmseg's pipeline with the reference's crop: no limit on the share of one class in a crop
# (INPUT.CROP.SINGLE_CATEGORY_MAX_AREA 1.0; mmseg's Mask2Former configs use 0.75).
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(
        type='RandomChoiceResize',
        scales=[int(x * 0.1 * 640) for x in range(5, 21)],
        resize_type='ResizeShortestEdge',
        max_size=2560),
    dict(type='RandomCrop', crop_size={{_base_.crop_size}}, cat_max_ratio=1.0),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
