"""Feature extraction (``dinat_backbone.apis.features``, ``tools/extract_features.py``): the
files it writes, values equal to running the backbone directly, batching by image size, the
checkpoint kinds it reads, and its errors."""
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from dinat_backbone.apis.features import FeatureExtractor, Preprocessing, build_backbone
from dinat_backbone.models import DiNAT

from helpers import load_tool

main = load_tool('extract_features').main

TINY = dict(arch=dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], mlp_ratio=2.),
            kernel_size=3, dilations=[[4], [2], [1], [1]])
# Distinct per channel, so that a missing or doubled BGR -> RGB flip changes the features.
MEAN, STD = [100., 110., 120.], [50., 60., 70.]
CONFIG = f"""\
model = dict(
    type='EncoderDecoder',
    data_preprocessor=dict(type='SegDataPreProcessor', mean={MEAN}, std={STD}, bgr_to_rgb=True),
    backbone=dict(type='DiNAT', **{TINY!r}))
"""
# name -> (height, width); two sizes, so that batches must group by size.
IMAGES = {'a.png': (40, 56), 'sub/b.png': (33, 47), 'sub/c.jpg': (40, 56)}


def random_backbone(seed: int, **kwargs) -> DiNAT:
    """A DiNAT with every tensor (rpb, norms, biases too) set to seeded random values."""
    model = DiNAT(**{**TINY, 'drop_path_rate': 0., **kwargs}).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2 + 0.05)
    return model


def direct_features(model: DiNAT, path: str, mean, std, rgb: bool = True) -> list:
    """The backbone run by hand on the image at ``path`` (OpenCV BGR -> RGB, normalised)."""
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    x = torch.from_numpy(image[..., ::-1].copy() if rgb else image).permute(2, 0, 1).float()
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    with torch.no_grad():
        return [out[0] for out in model(x[None])]


@pytest.fixture(scope='module')
def files(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp('features')
    rng = np.random.default_rng(0)
    for name, (height, width) in IMAGES.items():
        path = root / 'images' / name
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    config = root / 'tiny_dinat.py'
    config.write_text(CONFIG)
    model = random_backbone(seed=1)
    backbone_ckpt = root / 'backbone.pth'
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, backbone_ckpt)
    # A whole trained segmentor: backbone.* plus heads, as mmengine's runner saves it.
    whole = {f'backbone.{k}': v for k, v in model.state_dict().items()}
    whole['decode_head.conv_seg.weight'] = torch.randn(150, 64, 1, 1)
    whole['decode_head.conv_seg.bias'] = torch.randn(150)
    whole_ckpt = root / 'segmentor.pth'
    torch.save({'state_dict': whole, 'meta': {'iter': 10}, 'message_hub': {}}, whole_ckpt)
    return dict(root=root, images=root / 'images', config=str(config), model=model,
                backbone_ckpt=str(backbone_ckpt), whole_ckpt=str(whole_ckpt))


def test_tool_writes_one_documented_file_per_image_equal_to_the_backbone(files, capsys):
    out = files['root'] / 'out'
    single = files['root'] / 'images' / 'a.png'
    # A directory (names relative to it) and a file given alone (named by its file name).
    assert main([files['config'], '--checkpoint', files['backbone_ckpt'],
                 '--input', str(files['images'] / 'sub'), str(single), '--out', str(out),
                 '--batch-size', '2']) == 0
    assert 'Wrote features of 3 images' in capsys.readouterr().out
    expected_files = {'a.pt': 'a.png', 'b.pt': 'sub/b.png', 'c.pt': 'sub/c.jpg'}
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob('*.pt')) == \
        sorted(expected_files)
    for file, image in expected_files.items():
        saved = torch.load(out / file, weights_only=True)
        assert sorted(saved) == ['features', 'image_size', 'source', 'strides']
        height, width = IMAGES[image]
        assert saved['image_size'] == (height, width)
        assert saved['source'] == str(files['images'] / image)
        assert saved['strides'] == [4, 8, 16, 32]
        assert [tuple(f.shape) for f in saved['features']] == [
            (16 * 2**i, math.ceil(height / s), math.ceil(width / s))
            for i, s in enumerate(saved['strides'])]
        assert all(f.dtype == torch.float32 for f in saved['features'])
        expected = direct_features(files['model'], saved['source'], MEAN, STD)
        for level, (got, want) in enumerate(zip(saved['features'], expected)):
            # Batched BLAS calls may round differently from a single image's.
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5, msg=f'level {level}')
        # Each file holds only its own image's features, not a view of the batch.
        assert all(f.untyped_storage().nbytes() == f.numel() * 4 for f in saved['features'])


def test_batches_group_images_by_size_and_match_batch_size_one(files):
    rng = np.random.default_rng(1)
    sizes = [(40, 56), (33, 47), (40, 56), (40, 56), (33, 47)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    extractor = FeatureExtractor(files['model'], Preprocessing(tuple(MEAN), tuple(STD)))
    batches = []
    hook = extractor.backbone.patch_embed.register_forward_hook(
        lambda module, args, output: batches.append(tuple(args[0].shape)))
    try:
        one = extractor.extract(images, batch_size=1)
        batches.clear()
        grouped = extractor.extract(images, batch_size=2)
    finally:
        hook.remove()
    # Never a mix of sizes; no padding or resizing.
    assert batches == [(2, 3, 40, 56), (1, 3, 40, 56), (2, 3, 33, 47)]
    for index, (a, b) in enumerate(zip(one, grouped)):
        assert a['image_size'] == b['image_size'] == sizes[index]
        assert a['source'] is None
        for got, want in zip(b['features'], a['features']):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_whole_model_checkpoint_gives_the_backbone_features(files):
    image = str(files['images'] / 'a.png')
    from_backbone = FeatureExtractor.from_config(files['config'], files['backbone_ckpt'])
    from_whole = FeatureExtractor.from_config(files['config'], files['whole_ckpt'],
                                              out_indices=[1, 3])
    assert from_whole.strides == [8, 32]
    assert from_backbone.preprocessing == Preprocessing(tuple(MEAN), tuple(STD), True)
    full = from_backbone.extract([image])[0]['features']
    subset = from_whole.extract([image])[0]['features']
    assert len(subset) == 2
    torch.testing.assert_close(subset[0], full[1], rtol=0, atol=0)
    torch.testing.assert_close(subset[1], full[3], rtol=0, atol=0)


def test_arch_name_reads_the_kernel_size_and_uses_imagenet_statistics(files, tmp_path):
    # An original SHI-Labs layout checkpoint (with its classifier) of Mini with a 5x5 kernel.
    model = DiNAT(arch='mini', kernel_size=5, dilations='imagenet', drop_path_rate=0.,
                  out_indices=(3, )).eval()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.02, 0.1, generator=generator)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith('norm3.')}
    state.update({'norm.weight': torch.ones(512), 'norm.bias': torch.zeros(512),
                  'head.weight': torch.zeros(1000, 512), 'head.bias': torch.zeros(1000)})
    torch.save({'model': state}, tmp_path / 'mini_k5.pth')
    backbone, preprocessing = build_backbone('mini', str(tmp_path / 'mini_k5.pth'),
                                             out_indices=[3])
    assert backbone.kernel_size == 5
    assert preprocessing == Preprocessing()  # ImageNet mean/std, RGB
    model.norm3.reset_parameters()  # not in an ImageNet checkpoint: left initialised
    image = str(files['images'] / 'sub' / 'b.png')
    got = FeatureExtractor(backbone, preprocessing).extract([image])[0]['features']
    expected = direct_features(model, image, Preprocessing().mean, Preprocessing().std)
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=1e-5)


def test_missing_input_and_unreadable_image_fail_clearly(files, tmp_path, capsys):
    args = [files['config'], '--checkpoint', files['backbone_ckpt'], '--no-progress']
    assert main(args + ['--input', str(tmp_path / 'nope'), '--out', str(tmp_path / 'o1')]) == 1
    assert f"Input path not found: '{tmp_path / 'nope'}'" in capsys.readouterr().err

    broken = tmp_path / 'broken' / 'x.jpg'
    broken.parent.mkdir()
    broken.write_bytes(b'not a JPEG at all')
    assert main(args + ['--input', str(broken.parent), '--out', str(tmp_path / 'o2')]) == 1
    err = capsys.readouterr().err
    assert f"Cannot read image '{broken}'" in err
    assert not (tmp_path / 'o2').exists()

    clash = tmp_path / 'clash'
    clash.mkdir()
    for name in ('p.png', 'p.jpg'):
        cv2.imwrite(str(clash / name), np.zeros((8, 8, 3), np.uint8))
    assert main(args + ['--input', str(clash), '--out', str(tmp_path / 'o3')]) == 1
    assert 'p.pt <- ' in capsys.readouterr().err

    empty = tmp_path / 'empty'
    empty.mkdir()
    assert main(args + ['--input', str(empty), '--out', str(tmp_path / 'o4')]) == 1
    assert 'No images' in capsys.readouterr().err


def test_non_dinat_config_and_unknown_arch_are_rejected(tmp_path):
    config = tmp_path / 'resnet.py'
    config.write_text("model = dict(backbone=dict(type='ResNet', depth=18))\n")
    with pytest.raises(ValueError, match="model.backbone is 'ResNet', not DiNAT"):
        build_backbone(str(config))
    with pytest.raises(ValueError, match='neither a config file'):
        build_backbone('tiny-ish')
    with pytest.raises(FileNotFoundError, match='Config file not found'):
        build_backbone(str(tmp_path / 'missing.py'))


@pytest.mark.slow  # the session-trained demo model
def test_trained_sample_checkpoint_gives_the_segmentors_own_backbone_features(
        trained_sample, sample_data_root, tmp_path):
    """The session's UPerNet-DiNAT trained on the sample (tests/conftest.py): given the sample
    config and the whole mmseg checkpoint, the tool saves what the trained segmentor's own data
    preprocessor and backbone compute (images of several sizes, batched)."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint
    from mmseg.registry import MODELS

    images = Path(sample_data_root['ade20k']) / 'images' / 'validation'
    out = tmp_path / 'out'
    assert main([trained_sample['config'], '--checkpoint', str(trained_sample['checkpoint']),
                 '--input', str(images), '--out', str(out), '--batch-size', '4',
                 '--no-progress']) == 0
    init_default_scope('mmseg')
    segmentor = MODELS.build(Config.fromfile(trained_sample['config']).model).eval()
    load_checkpoint(segmentor, str(trained_sample['checkpoint']), map_location='cpu',
                    strict=True)
    paths = sorted(images.glob('*.jpg'))
    assert len({cv2.imread(str(p)).shape for p in paths}) > 1  # batching has sizes to group
    assert sorted(p.name for p in out.glob('*.pt')) == sorted(f'{p.stem}.pt' for p in paths)
    for path in paths:
        saved = torch.load(out / f'{path.stem}.pt', weights_only=True)
        # What LoadImageFromFile + PackSegInputs hand to the model: uint8 BGR, [3, H, W].
        image = torch.from_numpy(cv2.imread(str(path), cv2.IMREAD_COLOR)).permute(2, 0, 1)
        with torch.no_grad():
            inputs = segmentor.data_preprocessor(dict(inputs=[image]), False)['inputs']
            expected = segmentor.extract_feat(inputs)
        assert len(saved['features']) == len(expected) == 4
        for level, (got, want) in enumerate(zip(saved['features'], expected)):
            torch.testing.assert_close(got, want[0], rtol=0, atol=1e-5,
                                       msg=f'{path.name} level {level}')
