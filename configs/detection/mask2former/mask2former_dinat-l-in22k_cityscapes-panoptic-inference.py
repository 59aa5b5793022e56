# Mask2Former + DiNAT-Large, Cityscapes panoptic (8 things + 11 stuff; paper: PQ 67.2, trained
# 90k iterations on 512x1024 crops with the reference's Cityscapes recipe). MODEL ONLY: mmdet
# 3.3 has no Cityscapes panoptic dataset, so this config can neither train nor evaluate (no
# PQ); it holds the model, the class names and the test pipeline (shortest edge 1024, as the
# reference) to load the published weights and predict, e.g. with mmdet.apis.init_detector +
# inference_detector or DetInferencer. Classes are in mmdet's panoptic order: things first.
_base_ = ['./mask2former_dinat-l-in22k_16xb1-lsj-737.5k_coco-panoptic.py']

num_things_classes = 8
num_stuff_classes = 11
num_classes = num_things_classes + num_stuff_classes
model = dict(
    panoptic_head=dict(
        num_things_classes=num_things_classes,
        num_stuff_classes=num_stuff_classes,
        loss_cls=dict(class_weight=[1.0] * num_classes + [0.1])),
    panoptic_fusion_head=dict(
        num_things_classes=num_things_classes, num_stuff_classes=num_stuff_classes))

thing_classes = ('person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle')
stuff_classes = ('road', 'sidewalk', 'building', 'wall', 'fence', 'pole', 'traffic light',
                 'traffic sign', 'vegetation', 'terrain', 'sky')
metainfo = dict(
    classes=thing_classes + stuff_classes,
    thing_classes=thing_classes,
    stuff_classes=stuff_classes,
    # the Cityscapes label colours
    palette=[(220, 20, 60), (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100),
             (0, 0, 230), (119, 11, 32), (128, 64, 128), (244, 35, 232), (70, 70, 70),
             (102, 102, 156), (190, 153, 153), (153, 153, 153), (250, 170, 30), (220, 220, 0),
             (107, 142, 35), (152, 251, 152), (70, 130, 180)])
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='Resize', scale=(2048, 1024), keep_ratio=True),
    dict(
        type='PackDetInputs',
        meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
# Read by mmdet's inference APIs for the pipeline and the class metadata only: a dataset with
# no files behind it (they build it with lazy_init=True).
test_dataloader = dict(
    _delete_=True,
    dataset=dict(type='BaseDetDataset', metainfo=metainfo, pipeline=test_pipeline))

train_dataloader = None
train_cfg = None
optim_wrapper = None
param_scheduler = None
val_dataloader = None
val_cfg = None
val_evaluator = None
test_cfg = None
test_evaluator = None
