# Smoke/demo run: Mask R-CNN + a small DiNAT trained from scratch on the synthetic COCO-format
# sample (`python tools/make_sample_data.py`: 24 train / 8 val images of 96-128 px, 3 classes).
# Runs on CPU in a few minutes. It inherits the Tiny 3x recipe (AdamW, no decay on rpb and
# norms, warmup + steps) and shrinks the model, images, anchors and schedule to the sample.
_base_ = ['../mask-rcnn_dinat-t_fpn_ms-crop-3x_coco.py']

data_root = 'data/sample/coco/'
metainfo = dict(classes=('stop sign', 'sports ball', 'kite'))
num_classes = 3

model = dict(
    backbone=dict(
        arch=dict(
            _delete_=True, embed_dims=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8],
            mlp_ratio=2.),
        # 128 px images give 32, 16, 8 and 4 px levels: dilations 4 and 2 fit a 3x3 kernel.
        kernel_size=3,
        dilations=[[1, 4], [1, 2], [1, 2], [1, 1]],
        drop_path_rate=0.1,
        init_cfg=None),  # from scratch: no download
    neck=dict(in_channels=[32, 64, 128, 256], out_channels=64),
    rpn_head=dict(
        in_channels=64,
        feat_channels=64,
        # objects are 16-48 px: anchors of 16-256 px on the strides 4-64
        anchor_generator=dict(scales=[4])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(in_channels=64, fc_out_channels=256, num_classes=num_classes),
        mask_roi_extractor=dict(out_channels=64),
        mask_head=dict(in_channels=64, conv_out_channels=64, num_classes=num_classes)),
    # at most 4 objects per 128 px image: far fewer proposals and RoIs than on COCO
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=200, max_per_img=100), rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=100), rcnn=dict(max_per_img=20)))

backend_args = None
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='RandomChoiceResize', scales=[(112, 160), (128, 160), (144, 160)],
         keep_ratio=True),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(
        data_root=data_root, metainfo=metainfo, pipeline=train_pipeline,
        filter_cfg=dict(filter_empty_gt=True, min_size=8)))
val_dataloader = dict(
    batch_size=2,
    num_workers=0,
    persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json',
                     metric=['bbox', 'segm'])
test_evaluator = val_evaluator

max_epochs = 12
train_cfg = dict(max_epochs=max_epochs, val_interval=4)
optim_wrapper = dict(optimizer=dict(lr=1e-3))  # from scratch on a toy set: a larger lr
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=20),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[9, 11],
         gamma=0.1)
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=4),
    checkpoint=dict(type='CrashSafeCheckpointHook', interval=4, max_keep_ckpts=2))
log_processor = dict(window_size=4)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
