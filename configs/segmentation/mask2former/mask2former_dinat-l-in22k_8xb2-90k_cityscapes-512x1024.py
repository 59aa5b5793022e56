# Mask2Former + DiNAT-Large (ImageNet-22k weights), Cityscapes semantic segmentation (19
# classes), 512x1024 crops, 90k iterations (paper: mIoU 84.5 multi-scale, mmseg's
# tta_pipeline). The model and optimizer are the ADE20K config's; what changes is what mmseg's
# Swin-L Cityscapes config (mask2former_swin-l-in22k-384x384-pre_8xb2-90k_cityscapes-512x1024.py)
# changes on its ADE20K one: the classes, the data (mmseg's _base_/datasets/cityscapes.py,
# shortest edge 512..2048 with max 4096, test at 1024x2048 padded to a multiple of 32) and 90k
# iterations. Restated here because a config cannot inherit two bases that define the same
# keys. As in the ADE20K config, crops have no limit on one class's share (the reference's
# SINGLE_CATEGORY_MAX_AREA 1.0; mmseg uses 0.75).
_base_ = ['./mask2former_dinat-l-in22k_8xb2-160k_ade20k-640x640.py']

num_classes = 19
crop_size = (512, 1024)
data_preprocessor = dict(size=crop_size, test_cfg=dict(size_divisor=32))
model = dict(
    data_preprocessor=data_preprocessor,
    decode_head=dict(
        num_classes=num_classes, loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])))

dataset_type = 'CityscapesDataset'
data_root = 'data/cityscapes/'
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(
        type='RandomChoiceResize',
        scales=[int(1024 * x * 0.1) for x in range(5, 21)],
        resize_type='ResizeShortestEdge',
        max_size=4096),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=1.0),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 1024), keep_ratio=True),
    # annotations are loaded after Resize: the ground truth keeps its original size
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    num_workers=2,
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train'),
        pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader

max_iters = 90000
param_scheduler = [
    dict(type='PolyLR', eta_min=0, power=0.9, begin=0, end=max_iters, by_epoch=False)
]
train_cfg = dict(max_iters=max_iters)
