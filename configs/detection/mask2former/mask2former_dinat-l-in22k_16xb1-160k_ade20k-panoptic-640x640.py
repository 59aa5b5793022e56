# Mask2Former + DiNAT-Large (ImageNet-22k weights), ADE20K panoptic (100 things + 50 stuff),
# 640x640 crops, 160k iterations with poly LR (paper: PQ 49.4). The model and optimizer are the
# COCO panoptic config's; the data follow the reference (Mask2Former's
# Base-ADE20K-PanopticSegmentation.yaml): shortest edge 320..1280 (max 2560), 640 crop,
# photometric distortion, flip, images padded to 640; test at shortest edge 640 (mmdet's
# _base_/datasets/ade20k_panoptic.py). The reference also reports AP 35.0 and mIoU 56.3 of
# this model; mmdet 3.3 evaluates ADE20K panoptic models by PQ only.
#
# Data: ADEChallengeData2016 with the COCO-format panoptic annotations that mmdet's
# tools/dataset_converters/ade20k2coco.py writes into it, in the folder mmseg's ADE20K configs
# use (data/ade/ADEChallengeData2016), so one copy serves both.
_base_ = ['./mask2former_dinat-l-in22k_16xb1-lsj-737.5k_coco-panoptic.py']

num_things_classes = 100
num_stuff_classes = 50
num_classes = num_things_classes + num_stuff_classes
crop_size = (640, 640)
model = dict(
    data_preprocessor=dict(batch_augments=[
        dict(
            type='BatchFixedSizePad',
            size=crop_size,
            img_pad_value=0,
            pad_mask=True,
            mask_pad_value=0,
            pad_seg=True,
            seg_pad_value=255)
    ]),
    panoptic_head=dict(
        num_things_classes=num_things_classes,
        num_stuff_classes=num_stuff_classes,
        loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])),
    panoptic_fusion_head=dict(
        num_things_classes=num_things_classes, num_stuff_classes=num_stuff_classes))

dataset_type = 'ADE20KPanopticDataset'
data_root = 'data/ade/ADEChallengeData2016/'
train_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True, backend_args={{_base_.backend_args}}),
    dict(
        type='LoadPanopticAnnotations',
        with_bbox=True,
        with_mask=True,
        with_seg=True,
        backend_args={{_base_.backend_args}}),
    dict(
        type='RandomChoiceResize',
        scales=[(2560, int(x * 0.1 * 640)) for x in range(5, 21)],
        keep_ratio=True),
    dict(
        type='RandomCrop',
        crop_size=crop_size,
        crop_type='absolute',
        recompute_bbox=True,
        allow_negative_crop=True),
    dict(type='PhotoMetricDistortion'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='Resize', scale=(2560, 640), keep_ratio=True),
    dict(type='LoadPanopticAnnotations', backend_args={{_base_.backend_args}}),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='ade20k_panoptic_train.json',
        data_prefix=dict(img='images/training/', seg='ade20k_panoptic_train/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='ade20k_panoptic_val.json',
        data_prefix=dict(img='images/validation/', seg='ade20k_panoptic_val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = dict(
    _delete_=True,
    type='CocoPanopticMetric',
    ann_file=data_root + 'ade20k_panoptic_val.json',
    seg_prefix=data_root + 'ade20k_panoptic_val/',
    backend_args={{_base_.backend_args}})
test_evaluator = val_evaluator

# 160k iterations, poly LR (power 0.9, as detectron2's WarmupPolyLR without warmup),
# validation every 5000 iterations.
max_iters = 160000
param_scheduler = [
    dict(type='PolyLR', eta_min=0, power=0.9, begin=0, end=max_iters, by_epoch=False)
]
train_cfg = dict(max_iters=max_iters, val_interval=5000, dynamic_intervals=None)
