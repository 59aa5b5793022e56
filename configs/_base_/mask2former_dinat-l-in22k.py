# DiNAT-Large (ImageNet-22k weights) in Mask2Former: the backbone and the reference's learning
# rate and weight decay rules, shared by the mmdet and the mmseg Mask2Former configs. Those
# inherit this file next to mmdet's or mmseg's Swin-L Mask2Former config and use its variables
# as {{_base_.dinat_l_backbone}} and so on: it defines plain, prefixed variables only, because
# mmengine refuses a top-level key (`model`, `pretrained`, ...) defined by two bases of a config.

# The published 11x11 ImageNet-22k weights (rpb already 21x21; the reference interpolated the
# 7x7 model's rpb the same way).
dinat_l_pretrained = ('https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/'
                      'dinat_large_in22k_224_11x11interp.pth')
dinat_l_depths = [3, 4, 18, 5]  # DiNAT-Large, used by the decay rules below
dinat_l_backbone = dict(
    _delete_=True,  # replaces the Swin-L backbone of the inheriting config
    type='DiNAT',
    arch='large',
    kernel_size=11,
    dilations='mask2former',  # per-block dilations of every reference Mask2Former config
    drop_path_rate=0.3,
    out_indices=(0, 1, 2, 3),
    init_cfg=dict(type='Pretrained', checkpoint=dinat_l_pretrained))
dinat_l_out_channels = [192, 384, 768, 1536]  # the widths of the four outputs, for the head

# Learning rate and weight decay as the reference's optimizer (Mask2Former's train_net.py
# build_optimizer): backbone lr x0.1; no decay on norm layers and on the embeddings (its
# nn.Embedding modules query_feat, query_embed and the decoder's level_embed); everything else
# decays, DiNAT's `rpb` included (the reference exempts Swin's bias tables by name only) and the
# pixel decoder's level encoding (an nn.Parameter there). mmengine applies one custom key per
# parameter (the longest match) and then skips norm_decay_mult, so the backbone's LayerNorms are
# listed by name, as mmdet's and mmseg's Swin configs do; Swin's keys are dropped (`_delete_`).
dinat_l_backbone_norm_multi = dict(lr_mult=0.1, decay_mult=0.0)
dinat_l_embed_multi = dict(lr_mult=1.0, decay_mult=0.0)
dinat_l_custom_keys = {
    '_delete_': True,
    'backbone': dict(lr_mult=0.1, decay_mult=1.0),
    'backbone.patch_embed.norm': dinat_l_backbone_norm_multi,
    'backbone.norm': dinat_l_backbone_norm_multi,  # output norms norm0..norm3
    **{
        f'backbone.levels.{level}.blocks.{block}.norm': dinat_l_backbone_norm_multi
        for level, depth in enumerate(dinat_l_depths) for block in range(depth)
    },
    **{
        f'backbone.levels.{level}.downsample.norm': dinat_l_backbone_norm_multi
        for level in range(len(dinat_l_depths) - 1)
    },
    'query_embed': dinat_l_embed_multi,
    'query_feat': dinat_l_embed_multi,
    'level_embed': dinat_l_embed_multi,
}
