# The small Mask2Former-DiNAT of the CPU sample configs (mmdet COCO panoptic, mmseg ADE20K
# semantic), trained from scratch: a 32-wide DiNAT and a head shrunk where it costs CPU time
# (64-wide layers, 20 queries, 2 encoder and 3 decoder layers). The samples inherit this next to
# their paper config; plain variables, for the reason given in mask2former_dinat-l-in22k.py.
embed_dims = 64
sample_dinat_arch = dict(
    _delete_=True, embed_dims=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], mlp_ratio=2.)
sample_mask2former_head = dict(
    in_channels=[32, 64, 128, 256],
    feat_channels=embed_dims,
    out_channels=embed_dims,
    num_queries=20,
    pixel_decoder=dict(
        encoder=dict(
            num_layers=2,
            layer_cfg=dict(
                self_attn_cfg=dict(embed_dims=embed_dims, num_heads=4),
                ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=4 * embed_dims))),
        positional_encoding=dict(num_feats=embed_dims // 2)),
    positional_encoding=dict(num_feats=embed_dims // 2),
    transformer_decoder=dict(
        num_layers=3,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=embed_dims, num_heads=4),
            cross_attn_cfg=dict(embed_dims=embed_dims, num_heads=4),
            ffn_cfg=dict(embed_dims=embed_dims, feedforward_channels=4 * embed_dims))))
