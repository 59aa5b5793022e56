# Mask2Former + DiNAT-Large (ImageNet-22k weights), ADE20K semantic segmentation, 640x640
# crops, 160k iterations (paper: mIoU 58.1 multi-scale, mmseg's tta_pipeline: shortest edge
# x0.5..1.75 and flip, as the reference's TEST.AUG). The reference (SHI-Labs/Neighborhood-
# Attention-Transformer, mask2former/configs/ade20k/semantic-segmentation/dinat/) trained
# facebookresearch/Mask2Former's Swin-L recipe with DiNAT swapped in, so this config inherits
# mmseg's Swin-L one, which already has that recipe: 100 queries, AdamW lr 1e-4, wd 0.05,
# backbone lr x0.1, full-model gradient-norm clipping 0.01, poly LR (power 0.9), no fp16,
# 8 GPUs x 2 images (batch 16). The backbone, the decay rules and the crop differ.
_base_ = ['mmseg::mask2former/mask2former_swin-l-in22k-384x384-pre_8xb2-160k_ade20k-640x640.py']
custom_imports = dict(imports=['dinat_backbone'], allow_failed_imports=False)
# mmengine's CheckpointHook, with saves that survive a kill (dinat_backbone.engine.checkpoint_hook)
default_hooks = dict(checkpoint=dict(type='CrashSafeCheckpointHook'))

# The published 11x11 ImageNet-22k weights (rpb already 21x21; the reference interpolated the
# 7x7 model's rpb the same way).
pretrained = ('https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/'
              'dinat_large_in22k_224_11x11interp.pth')
depths = [3, 4, 18, 5]  # DiNAT-Large, used by the decay rules below
model = dict(
    backbone=dict(
        _delete_=True,
        type='DiNAT',
        arch='large',
        kernel_size=11,
        dilations='mask2former',  # per-block dilations of every reference Mask2Former config
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    decode_head=dict(in_channels=[192, 384, 768, 1536]))

# Learning rate and weight decay as the reference's optimizer (Mask2Former's train_net.py
# build_optimizer): backbone lr x0.1; no decay on norm layers and on the embeddings (its
# nn.Embedding modules query_feat, query_embed and the decoder's level_embed); everything else
# decays, DiNAT's `rpb` included (the reference exempts Swin's bias tables by name only) and the
# pixel decoder's level encoding (an nn.Parameter there). mmengine applies one custom key per
# parameter (the longest match) and then skips norm_decay_mult, so the backbone's LayerNorms are
# listed by name, as mmseg's Swin configs do; Swin's keys are dropped.
backbone_norm_multi = dict(lr_mult=0.1, decay_mult=0.0)
embed_multi = dict(lr_mult=1.0, decay_mult=0.0)
optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={
            '_delete_': True,
            'backbone': dict(lr_mult=0.1, decay_mult=1.0),
            'backbone.patch_embed.norm': backbone_norm_multi,
            'backbone.norm': backbone_norm_multi,  # output norms norm0..norm3
            **{
                f'backbone.levels.{level}.blocks.{block}.norm': backbone_norm_multi
                for level, depth in enumerate(depths) for block in range(depth)
            },
            **{
                f'backbone.levels.{level}.downsample.norm': backbone_norm_multi
                for level in range(len(depths) - 1)
            },
            'query_embed': embed_multi,
            'query_feat': embed_multi,
            'level_embed': embed_multi,
        }))

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
