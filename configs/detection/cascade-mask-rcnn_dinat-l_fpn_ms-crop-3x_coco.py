# Cascade Mask R-CNN (4conv1fc GIoU heads) + DiNAT-Large (ImageNet-22k weights), COCO,
# 3x multi-scale crop schedule (paper: 55.3 box / 47.8 mask AP). lr 7.5e-5.
_base_ = ['./cascade-mask-rcnn_dinat-t_fpn_ms-crop-3x_coco.py']
model = dict(
    backbone=dict(
        arch='large',
        drop_path_rate=0.6,
        init_cfg=dict(checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet22k/'
                      'dinat_large_in22k_224.pth')),
    neck=dict(in_channels=[192, 384, 768, 1536]))
optim_wrapper = dict(optimizer=dict(lr=7.5e-5))
