# UPerNet + DiNAT-Base, ADE20K 512x512, 160k iterations (paper: 49.6 / 50.4 mIoU).
# arch='base' includes layer scale 1e-5, as in the ImageNet checkpoint.
_base_ = ['./upernet_dinat-t_8xb2-160k_ade20k-512x512.py']
model = dict(
    backbone=dict(
        arch='base',
        drop_path_rate=0.5,
        init_cfg=dict(
            checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/'
            'dinat_base_in1k_224.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
