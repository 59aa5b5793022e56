# UPerNet with a DiNAT backbone on ADE20K: what every DiNAT segmentation config shares.
# mmseg's own bases give the UPerNet heads, the ADE20K 512x512 data pipeline, the runtime and
# the 160k schedule; this file swaps in the DiNAT backbone and the DiNAT training recipe
# (AdamW 6e-5, wd 0.01 without decay on rpb and norms, 1500-iter warmup then poly,
# 8 GPUs x 2 images). The variant configs set arch, drop path, weights and head widths.
_base_ = [
    'mmseg::_base_/models/upernet_swin.py', 'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_160k.py'
]
custom_imports = dict(imports=['dinat_backbone'], allow_failed_imports=False)
# mmengine's CheckpointHook with saves that survive a kill (dinat_backbone/engine/)
default_hooks = dict(checkpoint=dict(type='CrashSafeCheckpointHook'))

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        _delete_=True,
        type='DiNAT',
        arch='tiny',
        kernel_size=7,
        dilations='ade20k',  # per-block dilations of the reference ADE20K 512 configs
        drop_path_rate=0.3,
        out_indices=(0, 1, 2, 3)),
    decode_head=dict(in_channels=[64, 128, 256, 512], num_classes=150),
    auxiliary_head=dict(in_channels=256, in_index=2, num_classes=150))

# AdamW; no weight decay on the relative positional biases (`...attn.rpb`) and on every
# LayerNorm (`norm1`, `norm2`, `norm{i}`, `patch_embed.norm`, `levels.i.downsample.norm`).
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=6e-5, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(custom_keys={
        'rpb': dict(decay_mult=0.),
        'norm': dict(decay_mult=0.)
    }))

param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=1500, end=160000, by_epoch=False)
]

# By default, models are trained on 8 GPUs with 2 images per GPU (batch 16).
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader
