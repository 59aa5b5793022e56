# Cascade Mask R-CNN (4conv1fc GIoU heads) + DiNAT-Small, COCO, 3x multi-scale crop schedule
# (paper: 52.9 box / 45.8 mask AP).
_base_ = ['./cascade-mask-rcnn_dinat-t_fpn_ms-crop-3x_coco.py']
model = dict(
    backbone=dict(
        arch='small',
        drop_path_rate=0.5,
        init_cfg=dict(checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/'
                      'dinat_small_in1k_224.pth')),
    neck=dict(in_channels=[96, 192, 384, 768]))
