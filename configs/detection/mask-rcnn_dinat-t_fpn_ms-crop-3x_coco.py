# Mask R-CNN + DiNAT-Tiny, COCO, 3x multi-scale crop schedule (paper: 48.6 box / 43.5 mask AP).
_base_ = [
    './_base_/models/mask-rcnn_dinat_fpn.py', './_base_/coco-instance_ms-crop-3x_adamw.py'
]
model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.2,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/'
            'dinat_tiny_in1k_224.pth')),
    neck=dict(in_channels=[64, 128, 256, 512]))
