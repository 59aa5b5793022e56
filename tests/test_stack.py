"""The installed OpenMMLab stack works on CPU: mmcv's compiled ops, mmdet and mmseg models from
their own base configs (on the sample data) and mmengine checkpoints and resuming. The sample
datasets themselves are tested in test_sample_data.py."""
import pickle

import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope

import dinat_backbone  # noqa: F401  (mmengine's checkpoint loaders: weights_only + allow-list)
from dinat_backbone.datasets.sample_data import COCO_SAMPLE_CLASSES


# ----------------------------------------------------------------------------- mmcv.ops
def test_nms_hand_checked():
    from mmcv.ops import batched_nms, nms

    # IoU(a, b) = 81/119 = 0.68, IoU(b, d) = 54/146 = 0.37, IoU(a, d) = 50/150 = 0.33; c apart.
    boxes = torch.tensor([[0., 0., 10., 10.],    # a
                          [1., 1., 11., 11.],    # b
                          [20., 20., 30., 30.],  # c
                          [0., 5., 10., 15.]])   # d
    scores = torch.tensor([0.9, 0.95, 0.5, 0.8])
    dets, keep = nms(boxes, scores, iou_threshold=0.5)
    assert keep.tolist() == [1, 3, 2]  # a suppressed by b; sorted by score
    torch.testing.assert_close(dets[:, 4], torch.tensor([0.95, 0.8, 0.5]))
    torch.testing.assert_close(dets[:, :4], boxes[[1, 3, 2]])
    _, keep = nms(boxes, scores, iou_threshold=0.3)
    assert keep.tolist() == [1, 2]  # d (0.37 with b) goes too
    # Class-aware: b and a in different classes no longer suppress each other.
    _, keep = batched_nms(boxes, scores, torch.tensor([0, 1, 0, 0]),
                          dict(type='nms', iou_threshold=0.5))
    assert sorted(keep.tolist()) == [0, 1, 2, 3]


def test_roi_align_hand_checked_forward_and_backward():
    from mmcv.ops import roi_align

    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4).requires_grad_()
    # aligned=True shifts by half a pixel: one sample per bin at the bin centre - 0.5.
    # Roi [0, 0, 4, 4] in 2x2 bins samples (0.5, 0.5), (0.5, 2.5), (2.5, 0.5), (2.5, 2.5),
    # each the mean of a 2x2 block of pixels.
    out = roi_align(x, torch.tensor([[0., 0., 0., 4., 4.]]), (2, 2), 1.0, 1, 'avg', True)
    torch.testing.assert_close(out, torch.tensor([[[[2.5, 4.5], [10.5, 12.5]]]]))
    out.sum().backward()
    torch.testing.assert_close(x.grad, torch.full((1, 1, 4, 4), 0.25))  # each pixel, once

    # A single bin of roi [0, 0, 2, 2]: mean of pixels 0, 1, 4, 5; gradient only there.
    x.grad = None
    out = roi_align(x, torch.tensor([[0., 0., 0., 2., 2.]]), (1, 1), 1.0, 1, 'avg', True)
    assert out.item() == pytest.approx(2.5)
    out.backward()
    expected = torch.zeros(4, 4)
    expected[:2, :2] = 0.25
    torch.testing.assert_close(x.grad[0, 0], expected)


def test_roi_align_gradcheck():
    from mmcv.ops import roi_align

    torch.manual_seed(0)
    x = torch.rand(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    # Fractional corners keep the samples off the pixel grid (bilinear is smooth there).
    rois = torch.tensor([[0, 0.3, 0.7, 4.2, 3.9], [1, 1.1, 0.6, 6.3, 5.4]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda t: roi_align(t, rois, (2, 3), 1.0, 2, 'avg', True), (x,))


# ------------------------------------------------------------------------- models from configs
def _det_batch(sample_data_root, n=2):
    from mmdet.datasets import CocoDataset
    dataset = CocoDataset(
        data_root=sample_data_root['coco'], ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'), metainfo=dict(classes=COCO_SAMPLE_CLASSES),
        pipeline=[dict(type='LoadImageFromFile'),
                  dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                  dict(type='Resize', scale=(96, 96), keep_ratio=True),
                  dict(type='PackDetInputs')])
    return pseudo_collate([dataset[i] for i in range(n)])


def test_mmdet_mask_rcnn_from_base_config(sample_data_root):
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=False)

    cfg = Config.fromstring("_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py']\n", '.py')
    cfg.model.backbone.update(depth=18, base_channels=16, init_cfg=None)
    cfg.model.neck.update(in_channels=[16, 32, 64, 128], out_channels=32)
    cfg.model.rpn_head.update(in_channels=32, feat_channels=32)
    cfg.model.roi_head.bbox_roi_extractor.out_channels = 32
    cfg.model.roi_head.bbox_head.update(in_channels=32, fc_out_channels=64, num_classes=3)
    cfg.model.roi_head.mask_roi_extractor.out_channels = 32
    cfg.model.roi_head.mask_head.update(in_channels=32, conv_out_channels=32, num_classes=3)

    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MODELS.build(cfg.model)
        model.init_weights()
        batch = _det_batch(sample_data_root)
        model.train()
        data = model.data_preprocessor(batch, training=True)
        losses = model(**data, mode='loss')
        for key in ('loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask'):
            assert key in losses
        total, _ = model.parse_losses(losses)
        assert torch.isfinite(total) and total > 0
        total.backward()
        # frozen_stages=1 in the base config: the stem stays frozen, later stages learn
        assert model.backbone.conv1.weight.grad is None
        # (zero_init_residual: the last BN of each block starts at 0 and gets the gradient)
        assert model.backbone.layer4[0].bn2.weight.grad.abs().sum() > 0
        assert model.backbone.layer2[0].downsample[0].weight.grad.abs().sum() > 0
        assert model.roi_head.mask_head.conv_logits.weight.grad.abs().sum() > 0

        model.eval()
        with torch.no_grad():
            data = model.data_preprocessor(batch, training=False)
            results = model(**data, mode='predict')
    assert len(results) == 2
    for result, sample in zip(results, batch['data_samples']):
        pred = result.pred_instances
        assert pred.bboxes.shape[1] == 4 and len(pred) <= 100
        assert pred.masks.shape[1:] == tuple(sample.ori_shape)  # rescaled back


def test_mmseg_upernet_from_base_config(sample_data_root):
    from mmseg.datasets import ADE20KDataset
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)

    cfg = Config.fromstring("_base_ = ['mmseg::_base_/models/upernet_r50.py']\n", '.py')
    bn = dict(type='BN', requires_grad=True)  # SyncBN needs a GPU process group
    cfg.model.update(pretrained=None)
    cfg.model.data_preprocessor.update(size=(64, 64))
    cfg.model.backbone.update(depth=18, stem_channels=8, base_channels=8, norm_cfg=bn)
    cfg.model.decode_head.update(in_channels=[8, 16, 32, 64], channels=16, num_classes=150,
                                 norm_cfg=bn)
    cfg.model.auxiliary_head.update(in_channels=32, channels=8, num_classes=150, norm_cfg=bn)

    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MODELS.build(cfg.model)
        model.init_weights()
        assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
        dataset = ADE20KDataset(
            data_root=sample_data_root['ade20k'],
            data_prefix=dict(img_path='images/training', seg_map_path='annotations/training'),
            pipeline=[dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                      dict(type='RandomCrop', crop_size=(64, 64)), dict(type='PackSegInputs')])
        batch = pseudo_collate([dataset[i] for i in range(2)])
        model.train()
        data = model.data_preprocessor(batch, training=True)
        assert data['inputs'].shape == (2, 3, 64, 64)
        losses = model(**data, mode='loss')
        assert {'decode.loss_ce', 'aux.loss_ce'} <= set(losses)
        total, _ = model.parse_losses(losses)
        assert torch.isfinite(total)
        # Random init over 150 classes: cross-entropy near ln(150) = 5.0 (+0.4 * aux)
        assert 3.0 < losses['decode.loss_ce'].item() < 8.0
        total.backward()
        assert model.backbone.stem[0].weight.grad.abs().sum() > 0

        model.eval()
        with torch.no_grad():
            results = model(**model.data_preprocessor(batch, training=False), mode='predict')
    for result, sample in zip(results, batch['data_samples']):
        assert result.seg_logits.data.shape == (150, *sample.ori_shape)
        assert result.pred_sem_seg.data.shape == (1, *sample.ori_shape)
        assert result.pred_sem_seg.data.max() < 150


# ------------------------------------------------------------------ checkpoints and resuming
def test_runner_checkpoint_loads_back_and_resumes(tiny_seg_config, tmp_path):
    from mmengine.hooks import Hook
    from mmengine.runner import Runner, load_checkpoint
    from mmseg.utils import register_all_modules
    register_all_modules(init_default_scope=False)

    def config(**train_cfg):
        cfg = Config.fromfile(tiny_seg_config)
        cfg.work_dir = str(tmp_path)
        cfg.train_cfg.update(max_iters=4, val_interval=100, **train_cfg)
        cfg.default_hooks.checkpoint.interval = 2
        cfg.default_hooks.visualization = dict(type='SegVisualizationHook', draw=False)
        return cfg

    runner = Runner.from_cfg(config())
    runner.train()
    final_state = {k: v.clone() for k, v in runner.model.state_dict().items()}
    ckpt_path = tmp_path / 'iter_2.pth'
    assert ckpt_path.is_file() and (tmp_path / 'iter_4.pth').is_file()

    # The checkpoint pickles mmengine objects (HistoryBuffer in message_hub), which plain
    # torch.load(weights_only=True) of torch >= 2.6 rejects; mmengine's loader must cope.
    ckpt = torch.load(ckpt_path, map_location='cpu', weights_only=False)
    assert ckpt['meta']['iter'] == 2
    assert {'state_dict', 'optimizer', 'message_hub', 'param_schedulers'} <= set(ckpt)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(ckpt_path, map_location='cpu', weights_only=True)

    # load back into a fresh model: every tensor identical to what was saved
    with DefaultScope.overwrite_default_scope('mmseg'):
        from mmseg.registry import MODELS
        model = MODELS.build(Config.fromfile(tiny_seg_config).model)
    load_checkpoint(model, str(tmp_path / 'iter_4.pth'), map_location='cpu', strict=True)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, final_state[key], msg=key)

    class Record(Hook):
        """Records the iteration counter and weights the resumed loop starts from."""

        def __init__(self):
            self.iters, self.start_state = [], None

        def before_train(self, runner):
            self.start_state = {k: v.clone() for k, v in runner.model.state_dict().items()}
            self.lr = runner.optim_wrapper.get_lr()['lr'][0]

        def before_train_iter(self, runner, batch_idx, data_batch=None):
            self.iters.append(runner.iter)

    cfg = config()
    cfg.resume, cfg.load_from = True, str(ckpt_path)
    cfg.work_dir = str(tmp_path / 'resumed')
    resumed = Runner.from_cfg(cfg)
    record = Record()
    resumed.register_hook(record, priority='LOWEST')
    resumed.train()
    assert record.iters == [2, 3]  # counter restored: iterations 3 and 4 only
    assert resumed.iter == 4
    for key, value in record.start_state.items():
        torch.testing.assert_close(value, ckpt['state_dict'][key], msg=key)
    # optimizer and PolyLR state came back too: the decayed lr of iteration 2, not 0.01
    saved_lr = ckpt['optimizer']['param_groups'][0]['lr']
    assert saved_lr < 0.0085 and record.lr == pytest.approx(saved_lr)
    assert resumed.param_schedulers[0].last_step == 4
