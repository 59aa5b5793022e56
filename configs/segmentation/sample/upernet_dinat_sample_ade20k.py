# Demo: UPerNet + a small DiNAT trained from scratch on the synthetic ADE20K-format sample
# (`python tools/make_sample_data.py`, 32 training / 8 validation images of 64-96 px).
# Runs on CPU in a few minutes (`make demo`). It inherits the Tiny recipe (AdamW, no decay on
# rpb and norms, warmup + poly) and shrinks the model, the crops and the schedule to the
# sample; the 150-class ADE20K label convention (reduce_zero_label) is kept.
_base_ = ['../upernet_dinat-t_8xb2-160k_ade20k-512x512.py']

data_root = 'data/sample/ade20k'
crop_size = (64, 64)
norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN needs distributed CUDA

data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch=dict(
            _delete_=True, embed_dims=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8],
            mlp_ratio=2.),
        # At a 64 px crop the levels are 16, 8, 4 and 2 px wide: a 3x3 neighbourhood with
        # dilation 4 (level 0) and 2 (level 1) is a real sparse-global attention that fits.
        kernel_size=3,
        dilations=[[1, 4], [1, 2], [1, 1], [1, 1]],
        drop_path_rate=0.1,
        init_cfg=None),  # from scratch: no download
    decode_head=dict(
        in_channels=[32, 64, 128, 256], channels=64, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=128, channels=32, norm_cfg=norm_cfg))

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
optim_wrapper = dict(optimizer=dict(lr=2e-3))  # from scratch on a toy set: a larger lr
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=30),
    dict(type='PolyLR', eta_min=0.0, power=1.0, begin=30, end=max_iters, by_epoch=False)
]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=100)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    checkpoint=dict(type='CrashSafeCheckpointHook', by_epoch=False, interval=100,
                    max_keep_ckpts=2, save_best='mIoU', rule='greater'))
log_processor = dict(by_epoch=False, window_size=10)
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
