# Mask2Former + DiNAT-Large (ImageNet-22k weights), Cityscapes instance segmentation (8 thing
# classes), 512x1024 crops, 90k iterations with poly LR (paper: AP 45.1). The model and
# optimizer are the COCO instance config's; the data follow the reference (Mask2Former's
# Base-Cityscapes-InstanceSegmentation.yaml): shortest edge 512..2048 (max 4096), 512x1024 crop,
# photometric distortion, flip, no fixed-size padding; test at 1024x2048 (mmdet's
# _base_/datasets/cityscapes_instance.py).
#
# Metrics: CityScapesMetric gives the Cityscapes benchmark's instance AP, the published number
# (the reference evaluates with detectron2's CityscapesInstanceEvaluator, which runs the same
# cityscapesscripts evaluation); it needs `pip install cityscapesscripts` (MIT licence, not a
# dependency of dinat-backbone). CocoMetric adds COCO-style box/mask AP on the converted
# annotations, as mmdet's Cityscapes configs do; those are not comparable with the paper.
#
# Data: data/cityscapes with the COCO-format annotations made by mmdet's
# tools/dataset_converters/cityscapes.py (annotations/instancesonly_filtered_gtFine_*.json).
_base_ = ['./mask2former_dinat-l-in22k_16xb1-lsj-737.5k_coco.py']

num_things_classes = 8
num_classes = num_things_classes
crop_size = (1024, 512)  # 512 high, 1024 wide: mmdet's RandomCrop takes (width, height)
model = dict(
    # every crop is 512x1024 (the shortest edge is resized to >= 512)
    data_preprocessor=dict(batch_augments=None),
    panoptic_head=dict(
        num_things_classes=num_things_classes,
        loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])),
    panoptic_fusion_head=dict(num_things_classes=num_things_classes))

dataset_type = 'CityscapesDataset'
data_root = 'data/cityscapes/'
train_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True, backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='RandomChoiceResize',
        scales=[(4096, int(x * 0.1 * 1024)) for x in range(5, 21)],
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
    dict(type='Resize', scale=(2048, 1024), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instancesonly_filtered_gtFine_train.json',
        data_prefix=dict(img='leftImg8bit/train/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instancesonly_filtered_gtFine_val.json',
        data_prefix=dict(img='leftImg8bit/val/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader

val_evaluator = [
    dict(
        type='CocoMetric',
        ann_file=data_root + 'annotations/instancesonly_filtered_gtFine_val.json',
        metric=['bbox', 'segm'],
        backend_args={{_base_.backend_args}}),
    dict(
        type='CityScapesMetric',
        seg_prefix=data_root + 'gtFine/val',
        outfile_prefix='./work_dirs/cityscapes_metric/instance',
        backend_args={{_base_.backend_args}})
]
test_evaluator = val_evaluator

# 90k iterations, poly LR (power 0.9, as detectron2's WarmupPolyLR without warmup),
# validation every 5000 iterations.
max_iters = 90000
param_scheduler = [
    dict(type='PolyLR', eta_min=0, power=0.9, begin=0, end=max_iters, by_epoch=False)
]
train_cfg = dict(max_iters=max_iters, val_interval=5000, dynamic_intervals=None)
