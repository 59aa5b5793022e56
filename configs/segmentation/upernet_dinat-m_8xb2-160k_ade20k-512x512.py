# UPerNet + DiNAT-Mini, ADE20K 512x512, 160k iterations (paper: 45.8 / 47.2 mIoU).
# Same widths as Tiny; 6 blocks in level 2 (the 'ade20k' dilation preset follows the depths).
_base_ = ['./upernet_dinat-t_8xb2-160k_ade20k-512x512.py']
model = dict(
    backbone=dict(
        arch='mini',
        drop_path_rate=0.2,
        init_cfg=dict(
            checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/'
            'dinat_mini_in1k_224.pth')))
