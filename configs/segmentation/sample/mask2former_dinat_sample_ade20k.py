# Smoke/demo run: Mask2Former (semantic) + a small DiNAT trained from scratch on the synthetic
# ADE20K-format sample (`python tools/make_sample_data.py`, 32 training / 8 validation images of
# 64-96 px), evaluated with mIoU. It inherits the paper recipe (AdamW, full-model gradient
# clipping, the reference's decay rules, poly LR) and shrinks what costs CPU time: 64 px crops,
# 20 queries, 3 decoder layers, 1024 sampled points, 64-wide heads. The 150-class ADE20K label
# convention (reduce_zero_label) is kept. Deformable attention runs through mmcv's PyTorch
# fallback on CPU.
_base_ = [
    '../mask2former/mask2former_dinat-l-in22k_8xb2-160k_ade20k-640x640.py',
    '../../_base_/mask2former_dinat_sample.py'
]

data_root = 'data/sample/ade20k'
crop_size = (64, 64)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(
        arch={{_base_.sample_dinat_arch}},
        # At a 64 px crop the levels are 16, 8, 4 and 2 px wide: a 3x3 neighbourhood with
        # dilation 4 (level 0) and 2 (level 1) is a real sparse-global attention that fits.
        kernel_size=3,
        dilations=[[1, 4], [1, 2], [1, 1], [1, 1]],
        drop_path_rate=0.1,
        init_cfg=None),  # from scratch: no download
    decode_head=dict(
        **_base_.sample_mask2former_head,  # the small head, sampling 1024 points
        train_cfg=dict(num_points=1024)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(96, 96), ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),  # evaluated at the original 64-96 px
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
# The sample uses 6 of ADE20K's 150 classes: list only those in the per-class table.
val_evaluator = dict(type='PresentClassIoUMetric')
test_evaluator = val_evaluator

max_iters = 300
optim_wrapper = dict(optimizer=dict(lr=1e-3))  # from scratch on a toy set: a larger lr
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=20),
    dict(type='PolyLR', eta_min=0.0, power=0.9, begin=20, end=max_iters, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=100)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    checkpoint=dict(type='CrashSafeCheckpointHook', by_epoch=False, interval=100,
                    max_keep_ckpts=2, save_best='mIoU', rule='greater'))
log_processor = dict(by_epoch=False, window_size=10)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
