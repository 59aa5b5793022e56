# Mask R-CNN + DiNAT-Mini, COCO, 3x multi-scale crop schedule (paper: 47.2 box / 42.5 mask AP).
# Same widths as Tiny; 6 blocks in level 2 (the 'coco' dilation preset follows the depths).
_base_ = ['./mask-rcnn_dinat-t_fpn_ms-crop-3x_coco.py']
model = dict(
    backbone=dict(
        arch='mini',
        drop_path_rate=0.2,
        init_cfg=dict(checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/'
                      'dinat_mini_in1k_224.pth')))
