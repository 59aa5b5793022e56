# Mask2Former + DiNAT-Large (ImageNet-22k weights), ADE20K instance segmentation (100 thing
# classes), 640x640 crops, 160k iterations with poly LR (paper: mask AP 35.4). The model and
# optimizer are the COCO instance config's; the data follow the reference (Mask2Former's
# Base-ADE20K-InstanceSegmentation.yaml), as in the ADE20K panoptic config; test at shortest
# edge 640 (mmdet's _base_/datasets/ade20k_instance.py).
#
# Data: ADEChallengeData2016 with the COCO-format instance annotations that mmdet's
# tools/dataset_converters/ade20k2coco.py --task instance writes into it, in the folder mmseg's
# ADE20K configs use (data/ade/ADEChallengeData2016), so one copy serves both.
_base_ = ['./mask2former_dinat-l-in22k_16xb1-lsj-737.5k_coco.py']

num_things_classes = 100
num_classes = num_things_classes
crop_size = (640, 640)
model = dict(
    data_preprocessor=dict(batch_augments=[
        dict(
            type='BatchFixedSizePad',
            size=crop_size,
            img_pad_value=0,
            pad_mask=True,
            mask_pad_value=0,
            pad_seg=False)
    ]),
    panoptic_head=dict(
        num_things_classes=num_things_classes,
        loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])),
    panoptic_fusion_head=dict(num_things_classes=num_things_classes))

dataset_type = 'ADE20KInstanceDataset'
data_root = 'data/ade/ADEChallengeData2016/'
train_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True, backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
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
    dict(type='FilterAnnotations', min_gt_bbox_wh=(1e-5, 1e-5), by_mask=True),
    dict(type='PhotoMetricDistortion'),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='Resize', scale=(2560, 640), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='ade20k_instance_train.json',
        data_prefix=dict(img='images/training/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='ade20k_instance_val.json',
        data_prefix=dict(img='images/validation/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = dict(ann_file=data_root + 'ade20k_instance_val.json')
test_evaluator = val_evaluator

# 160k iterations, poly LR (power 0.9, as detectron2's WarmupPolyLR without warmup),
# validation every 5000 iterations.
max_iters = 160000
param_scheduler = [
    dict(type='PolyLR', eta_min=0, power=0.9, begin=0, end=max_iters, by_epoch=False)
]
train_cfg = dict(max_iters=max_iters, val_interval=5000, dynamic_intervals=None)
