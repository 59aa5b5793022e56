# Mask2Former + DiNAT-Large (ImageNet-22k weights), COCO panoptic, large-scale jittering at
# 1024, 737,500 iterations (paper: PQ 58.5). The reference (SHI-Labs/Neighborhood-Attention-
# Transformer, mask2former/configs/coco/panoptic-segmentation/dinat/) trained
# facebookresearch/Mask2Former's Swin-L recipe with DiNAT swapped in, so this config inherits
# mmdet's Swin-L one, which already has that recipe: 200 queries, AdamW lr 1e-4, wd 0.05,
# backbone lr x0.1, full-model gradient-norm clipping 0.01, steps at 655,556 and 710,184, no
# fp16, 16 GPUs x 1 image (batch 16). Only the backbone and the decay rules differ.
_base_ = ['mmdet::mask2former/mask2former_swin-l-p4-w12-384-in21k_16xb1-lsj-100e_coco-panoptic.py']
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
    panoptic_head=dict(in_channels=[192, 384, 768, 1536]))

# Learning rate and weight decay as the reference's optimizer (Mask2Former's train_net.py
# build_optimizer): backbone lr x0.1; no decay on norm layers and on the embeddings (its
# nn.Embedding modules query_feat, query_embed and the decoder's level_embed); everything else
# decays, DiNAT's `rpb` included (the reference exempts Swin's bias tables by name only) and the
# pixel decoder's level encoding (an nn.Parameter there). mmengine applies one custom key per
# parameter (the longest match) and then skips norm_decay_mult, so the backbone's LayerNorms are
# listed by name, as mmdet's Swin configs do; Swin's keys are dropped.
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
