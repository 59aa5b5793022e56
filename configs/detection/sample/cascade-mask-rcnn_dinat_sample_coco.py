# Smoke run: Cascade Mask R-CNN + a small DiNAT, from scratch on the synthetic COCO-format
# sample. It is the Mask R-CNN sample (same data, backbone, neck, RPN, mask head and schedule)
# with the three 4conv1fc GIoU box heads of the paper's Cascade configs
# (../_base_/models/cascade-mask-rcnn_dinat_fpn_4conv1fc-giou.py), narrow and with BN instead
# of SyncBN.
_base_ = ['./mask-rcnn_dinat_sample_coco.py']

num_classes = 3
norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN needs distributed CUDA


def _bbox_head(target_stds):
    return dict(
        type='ConvFCBBoxHead',
        num_shared_convs=4,
        num_shared_fcs=1,
        in_channels=64,
        conv_out_channels=64,
        fc_out_channels=256,
        roi_feat_size=7,
        num_classes=num_classes,
        bbox_coder=dict(
            type='DeltaXYWHBBoxCoder', target_means=[0., 0., 0., 0.],
            target_stds=target_stds),
        reg_class_agnostic=False,
        reg_decoded_bbox=True,
        norm_cfg=norm_cfg,
        loss_cls=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=10.0))


model = dict(
    type='CascadeRCNN',
    # mmdet's Cascade base trains its RPN with smooth L1 and anchors inside the image only
    rpn_head=dict(loss_bbox=dict(type='SmoothL1Loss', beta=1.0 / 9.0, loss_weight=1.0)),
    roi_head=dict(
        type='CascadeRoIHead',
        num_stages=3,
        stage_loss_weights=[1, 0.5, 0.25],
        bbox_head=[
            _bbox_head([0.1, 0.1, 0.2, 0.2]),
            _bbox_head([0.05, 0.05, 0.1, 0.1]),
            _bbox_head([0.033, 0.033, 0.067, 0.067]),
        ]),
    # an assigner per stage at rising IoU thresholds; few RoIs for at most 4 objects an image
    train_cfg=dict(rpn=dict(allowed_border=0), rcnn=[
        dict(
            assigner=dict(
                type='MaxIoUAssigner', pos_iou_thr=iou, neg_iou_thr=iou, min_pos_iou=iou,
                match_low_quality=False, ignore_iof_thr=-1),
            sampler=dict(
                type='RandomSampler', num=64, pos_fraction=0.25, neg_pos_ub=-1,
                add_gt_as_proposals=True),
            mask_size=28,
            pos_weight=-1,
            debug=False) for iou in (0.5, 0.6, 0.7)
    ]))
del _bbox_head
