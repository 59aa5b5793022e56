# UPerNet + DiNAT-Tiny, ADE20K 512x512, 160k iterations (paper: 47.8 / 48.8 mIoU).
_base_ = ['./_base_/upernet_dinat.py']
model = dict(
    backbone=dict(
        arch='tiny',
        drop_path_rate=0.3,
        init_cfg=dict(
            type='Pretrained',
            checkpoint='https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/'
            'dinat_tiny_in1k_224.pth')),
    decode_head=dict(in_channels=[64, 128, 256, 512]),
    auxiliary_head=dict(in_channels=256))
