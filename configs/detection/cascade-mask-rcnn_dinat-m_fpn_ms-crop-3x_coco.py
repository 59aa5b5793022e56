# Cascade Mask R-CNN (4conv1fc GIoU heads) + DiNAT-Mini, COCO, 3x multi-scale crop schedule
# (paper: 51.2 box / 44.4 mask AP). Same widths as Tiny.
_base_ = ['./cascade-mask-rcnn_dinat-t_fpn_ms-crop-3x_coco.py']
model = dict(
    backbone=dict(
        arch='mini',
        drop_path_rate=0.2,
        init_cfg=dict(checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/'
                      'dinat_mini_in1k_224.pth')))
