# Mask R-CNN + FPN with a DiNAT backbone (mmdet's ResNet-50 Mask R-CNN, backbone swapped).
# The variant configs set arch, drop path, weights and the FPN input widths.
_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py']
model = dict(
    backbone=dict(
        _delete_=True,
        type='DiNAT',
        arch='tiny',
        kernel_size=7,
        dilations='coco',  # per-block dilations of the reference COCO configs
        drop_path_rate=0.2,
        out_indices=(0, 1, 2, 3)),
    neck=dict(in_channels=[64, 128, 256, 512]))
