# UPerNet + DiNAT-Large (ImageNet-22k weights), ADE20K 640x640, 160k iterations
# (paper: 54.0 / 54.9 mIoU).
# Differences from Tiny: the Large arch and weights, the 640 dilation preset, and the 640x640
# crop. The data settings are those of mmseg's `_base_/datasets/ade20k_640x640.py`, restated
# here because a config cannot inherit two bases that define the same keys.
_base_ = ['./upernet_dinat-t_8xb2-160k_ade20k-512x512.py']

crop_size = (640, 640)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        arch='large',
        dilations='ade20k-640',
        drop_path_rate=0.3,
        init_cfg=dict(
            checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/'
            'dinat_large_in22k_224.pth')),
    decode_head=dict(in_channels=[192, 384, 768, 1536]),
    auxiliary_head=dict(in_channels=768))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(2560, 640), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2560, 640), keep_ratio=True),
    # annotations are loaded after Resize: the ground truth keeps its original size
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader
