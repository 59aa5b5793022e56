# Smoke/demo run: Mask2Former + a small DiNAT trained from scratch on the synthetic COCO panoptic
# sample (`python tools/make_sample_data.py`: 24 train / 8 val images of 96-128 px, 3 thing and
# 2 stuff classes), evaluated with mmdet's CocoPanopticMetric (PQ) and CocoMetric (box/mask AP).
# Needs panopticapi (`pip install ./third_party/panopticapi`; the set-up installs it). It inherits
# the paper recipe (AdamW, full-model gradient clipping, the reference's decay rules) and shrinks
# what costs CPU time: no large-scale jittering to 1024 px (one tiny-DiNAT step took 62 s with
# that pad), 20 queries, 3 decoder layers, 1024 sampled points, 64-wide heads, 128 px images.
# Deformable attention runs through mmcv's PyTorch fallback on CPU.
_base_ = [
    '../mask2former/mask2former_dinat-l-in22k_16xb1-lsj-737.5k_coco-panoptic.py',
    '../../_base_/mask2former_dinat_sample.py'
]

data_root = 'data/sample/coco/'
# Things first, then stuff: mmdet's panoptic labels are 0..2 things, 3..4 stuff (the JSON lists
# the categories in that order; see dinat_backbone/datasets/sample_data.py).
thing_classes = ('stop sign', 'sports ball', 'kite')
stuff_classes = ('grass-merged', 'wall-other-merged')
metainfo = dict(classes=thing_classes + stuff_classes, thing_classes=thing_classes,
                stuff_classes=stuff_classes)
num_things_classes = len(thing_classes)
num_stuff_classes = len(stuff_classes)
num_classes = num_things_classes + num_stuff_classes
image_size = (128, 128)

model = dict(
    data_preprocessor=dict(batch_augments=None),  # images are padded to a multiple of 32 only
    backbone=dict(
        arch={{_base_.sample_dinat_arch}},
        # 128 px images give 32, 16, 8 and 4 px levels: dilations 4 and 2 fit a 3x3 kernel.
        kernel_size=3,
        dilations=[[1, 4], [1, 2], [1, 2], [1, 1]],
        drop_path_rate=0.1,
        init_cfg=None),  # from scratch: no download
    panoptic_head=dict(
        **_base_.sample_mask2former_head,  # the small head, with this sample's classes
        num_things_classes=num_things_classes,
        num_stuff_classes=num_stuff_classes,
        loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])),
    panoptic_fusion_head=dict(
        num_things_classes=num_things_classes, num_stuff_classes=num_stuff_classes),
    train_cfg=dict(num_points=1024),
    test_cfg=dict(max_per_image=20))

backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', to_float32=True, backend_args=backend_args),
    dict(type='LoadPanopticAnnotations', with_bbox=True, with_mask=True, with_seg=True,
         backend_args=backend_args),
    dict(type='RandomFlip', prob=0.5),
    # the paper's scale jittering, around the sample's size instead of 1024
    dict(type='RandomResize', scale=image_size, ratio_range=(0.75, 1.25), keep_ratio=True),
    dict(type='RandomCrop', crop_size=image_size, crop_type='absolute', recompute_bbox=True,
         allow_negative_crop=True),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=image_size, keep_ratio=True),
    dict(type='LoadPanopticAnnotations', backend_args=backend_args),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root, metainfo=metainfo, pipeline=train_pipeline,
        filter_cfg=dict(filter_empty_gt=True, min_size=32)))
val_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = [
    dict(type='CocoPanopticMetric',
         ann_file=data_root + 'annotations/panoptic_val2017.json',
         seg_prefix=data_root + 'annotations/panoptic_val2017/'),
    dict(type='CocoMetric',
         ann_file=data_root + 'annotations/instances_val2017.json',
         metric=['bbox', 'segm'])
]
test_evaluator = val_evaluator

max_iters = 300
optim_wrapper = dict(optimizer=dict(lr=1e-3))  # from scratch on a toy set: a larger lr
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=20),
    dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False,
         milestones=[int(max_iters * 0.9)], gamma=0.1)
]
train_cfg = dict(max_iters=max_iters, val_interval=100, dynamic_intervals=None)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CrashSafeCheckpointHook', by_epoch=False, interval=100,
                    max_keep_ckpts=2, save_best='coco_panoptic/PQ', rule='greater'))
log_processor = dict(window_size=10)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
