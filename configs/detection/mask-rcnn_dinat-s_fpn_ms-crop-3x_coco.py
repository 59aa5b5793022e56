# Mask R-CNN + DiNAT-Small, COCO, 3x multi-scale crop schedule (paper: 49.3 box / 44.0 mask AP).
_base_ = ['./mask-rcnn_dinat-t_fpn_ms-crop-3x_coco.py']
model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.35,
        init_cfg=dict(checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/'
                      'dinat_small_in1k_224.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
