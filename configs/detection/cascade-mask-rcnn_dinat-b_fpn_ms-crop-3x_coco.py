# Cascade Mask R-CNN (4conv1fc GIoU heads) + DiNAT-Base, COCO, 3x multi-scale crop schedule
# (paper: 53.4 box / 46.2 mask AP). arch='base' includes layer scale 1e-5; lr 7.5e-5.
_base_ = ['./cascade-mask-rcnn_dinat-t_fpn_ms-crop-3x_coco.py']
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.6,
        init_cfg=dict(checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/'
                      'dinat_base_in1k_224.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(optimizer=dict(lr=7.5e-5))
