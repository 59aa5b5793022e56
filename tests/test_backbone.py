"""The DiNAT backbone: reference parity, shapes, padding, freezing, checkpointing, errors."""
import pytest
import torch
import torch.nn.functional as F

from dinat_backbone.models import DiNAT, NeighborhoodAttention2D, dilation_preset
from helpers import DATA_DIR
from na_oracle import oracle

TINY_ARCH = dict(embed_dims=16, depths=[1, 2, 2, 1], num_heads=[1, 2, 2, 4], mlp_ratio=2.)
TINY_DILATIONS = [[1], [1, 2], [2, 1], [1]]


def tiny_dinat(**kwargs) -> DiNAT:
    kwargs = {'arch': TINY_ARCH, 'kernel_size': 3, 'dilations': TINY_DILATIONS,
              'drop_path_rate': 0., **kwargs}
    torch.manual_seed(0)
    model = DiNAT(**kwargs)
    model.init_weights()
    return model


@pytest.fixture(scope='module')
def reference():
    """A small DiNAT run by the original SHI-Labs code (see tests/data/README.md)."""
    return torch.load(DATA_DIR / 'reference_dinat_small_random.pt', weights_only=True)


def reference_backbone(reference) -> DiNAT:
    cfg = reference['config']
    model = DiNAT(
        arch=dict(embed_dims=int(cfg['embed_dim']), depths=reference['depths'].tolist(),
                  num_heads=reference['num_heads'].tolist(), mlp_ratio=float(cfg['mlp_ratio']),
                  layer_scale=float(cfg['layer_scale'])),
        kernel_size=int(cfg['kernel_size']),
        dilations=[d.tolist() for d in reference['dilations']], drop_path_rate=0.)
    return model.double().eval()


def test_matches_reference_implementation(reference):
    """Levels before downsampling equal the reference's; our output norms are applied on top."""
    model = reference_backbone(reference)
    weights = {k: v for k, v in reference['state_dict'].items()
               if not k.startswith(('head.', 'norm.'))}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    assert sorted(missing) == [f'norm{i}.{p}' for i in range(4) for p in ('bias', 'weight')]
    assert unexpected == []
    with torch.no_grad():
        outs = model(reference['input'])
    for i, (out, expected) in enumerate(zip(outs, reference['level_outputs_before_downsample'])):
        expected = F.layer_norm(expected, expected.shape[-1:]).permute(0, 3, 1, 2)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-10, msg=f'level {i}')


@pytest.mark.parametrize('size,expected', [
    ((64, 64), [(16, 16), (8, 8), (4, 4), (2, 2)]),
    ((63, 65), [(16, 17), (8, 9), (4, 5), (2, 3)]),
    ((28, 37), [(7, 10), (4, 5), (2, 3), (1, 2)]),
    ((8, 8), [(2, 2), (1, 1), (1, 1), (1, 1)]),
])
def test_output_shapes_strides_and_channels(size, expected):
    model = tiny_dinat().eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, *size))
    assert [tuple(o.shape[2:]) for o in outs] == expected
    assert [o.shape[1] for o in outs] == [16, 32, 64, 128] == model.out_channels
    assert all(o.is_contiguous() for o in outs)


def test_out_indices_select_levels():
    model = tiny_dinat(out_indices=(1, 3)).eval()
    outs = model(torch.randn(1, 3, 32, 32))
    assert [o.shape[1] for o in outs] == [32, 128]
    assert not hasattr(model, 'norm0') and hasattr(model, 'norm3')


def test_small_maps_are_zero_padded_before_qkv_and_cropped():
    """A 5x6 map with kernel 3, dilation 3 (needs 9 per axis): pad, attend, crop."""
    torch.manual_seed(0)
    layer = NeighborhoodAttention2D(8, 2, kernel_size=3, dilation=3).double()
    layer.init_weights()
    x = torch.randn(2, 5, 6, 8, dtype=torch.float64)
    padded = F.pad(x, (0, 0, 0, 3, 0, 4))
    q, k, v = layer.qkv(padded).reshape(2, 9, 9, 3, 2, 4).unbind(3)
    expected = oracle(q, k, v, 3, 3, rpb=layer.rpb)[:, :5, :6].reshape(2, 5, 6, 8)
    torch.testing.assert_close(layer(x), layer.proj(expected), rtol=0, atol=1e-12)


def test_inputs_smaller_than_kernel_times_dilation_work_at_every_level():
    model = tiny_dinat(arch=dict(TINY_ARCH, depths=[2, 2, 2, 2]), kernel_size=5,
                       dilations=dilation_preset('coco', [2, 2, 2, 2])).eval()
    outs = model(torch.randn(1, 3, 45, 50))
    assert [tuple(o.shape[2:]) for o in outs] == [(12, 13), (6, 7), (3, 4), (2, 2)]
    assert all(torch.isfinite(o).all() for o in outs)


def test_every_parameter_gets_a_gradient():
    model = tiny_dinat(arch=dict(TINY_ARCH, layer_scale=0.1)).train()
    sum(o.square().mean() for o in model(torch.randn(2, 3, 32, 40))).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f'No gradient for {name}'


@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 2, 3, 4])
def test_frozen_stages(frozen_stages):
    model = tiny_dinat(frozen_stages=frozen_stages)
    model.train()
    frozen = [model.patch_embed] if frozen_stages >= 0 else []
    for i in range(max(frozen_stages, 0)):
        frozen += [model.levels[i], getattr(model, f'norm{i}')]
    frozen_params = {id(p) for m in frozen for p in m.parameters()}
    for name, param in model.named_parameters():
        assert param.requires_grad == (id(param) not in frozen_params), name
    for module in frozen:
        assert all(not m.training for m in module.modules())
    trainable = [m for m in model.levels[max(frozen_stages, 0):]]
    assert all(m.training for level in trainable for m in level.modules())
    if frozen_stages == 4:
        assert not any(p.requires_grad for p in model.parameters())


def test_norm_eval_keeps_norms_in_eval_mode():
    model = tiny_dinat(norm_eval=True)
    assert model.train() is model
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(not m.training for m in norms)
    assert model.levels[0].blocks[0].attn.training


def test_with_cp_gives_the_same_gradients():
    x = torch.randn(2, 3, 32, 32)
    grads = []
    for with_cp in (False, True):
        model = tiny_dinat(with_cp=with_cp).train()
        sum(o.sum() for o in model(x)).backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], msg=name)


def test_drop_path_is_off_in_eval():
    x = torch.randn(1, 3, 32, 32)
    with_drop = tiny_dinat(drop_path_rate=0.5).eval()
    without = tiny_dinat(drop_path_rate=0.).eval()
    without.load_state_dict(with_drop.state_dict())
    for a, b in zip(with_drop(x), without(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with_drop.train()
    torch.manual_seed(1)
    assert not torch.equal(with_drop(x)[-1], without(x)[-1])


def test_bad_inputs_raise_clear_errors():
    model = tiny_dinat().eval()
    with pytest.raises(ValueError, match=r'\[B, C, H, W\]'):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match='3 input channels'):
        model(torch.randn(1, 4, 32, 32))


@pytest.mark.parametrize('kwargs,match', [
    (dict(arch='huge'), 'Unknown DiNAT arch'),
    (dict(arch=dict(embed_dims=16, depths=[1, 1, 1, 1])), 'missing'),
    (dict(dilations=[[1], [1], [1], [1]]), 'one dilation per block'),
    (dict(dilations='cityscapes'), 'Unknown dilation preset'),
    (dict(out_indices=(4, )), 'out_indices'),
    (dict(frozen_stages=5), 'frozen_stages'),
    (dict(arch=dict(TINY_ARCH, num_heads=[3, 2, 2, 4])), 'divisible by num_heads'),
    (dict(kernel_size=4), 'odd kernel size'),
])
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tiny_dinat(**kwargs)


def test_dilation_presets_match_the_paper():
    assert dilation_preset('coco', [3, 4, 18, 5]) == [
        [1, 28, 1], [1, 7, 1, 14], [1, 3, 1, 5, 1, 7] * 3, [1, 3, 1, 3, 1]]
    assert dilation_preset('ade20k', [3, 4, 6, 5]) == [
        [1, 16, 1], [1, 4, 1, 8], [1, 2, 1, 3, 1, 4], [1, 2, 1, 2, 1]]
    assert dilation_preset('imagenet', [3, 4, 18, 5]) == [
        [1, 8, 1], [1, 4, 1, 4], [1, 2] * 9, [1] * 5]
    assert dilation_preset('ade20k-640', [3, 4, 18, 5])[2] == [
        1, 2, 1, 3, 1, 4, 1, 5, 1, 2, 1, 3, 1, 4, 1, 5, 1, 5]


# ImageNet classifier parameters (backbone + final norm + 1000-way head), in millions, as
# published (rounded): Mini 20M, Tiny 28M, Small 51M, Base 90M, Large 200M. Ours: 19.98,
# 27.90, 50.72, 89.77, 200.94; a wrong width, depth or MLP ratio moves them by far more than 1%.
@pytest.mark.parametrize('arch,published', [('mini', 20), ('tiny', 28), ('small', 51),
                                            ('base', 90), ('large', 200)])
def test_parameter_counts_match_published(arch, published):
    with torch.device('meta'):
        model = DiNAT(arch=arch, out_indices=(3, ))
    width = model.num_features[-1]
    backbone = sum(p.numel() for n, p in model.named_parameters() if not n.startswith('norm'))
    classifier = backbone + 2 * width + width * 1000 + 1000
    assert abs(classifier / 1e6 - published) / published < 0.01, classifier


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_registered_in_mmdet_and_mmseg(scope):
    import importlib
    import dinat_backbone  # noqa: F401
    registry = importlib.import_module(f'{scope}.registry').MODELS
    model = registry.build(dict(type='DiNAT', arch=TINY_ARCH, kernel_size=3,
                                dilations=TINY_DILATIONS))
    assert isinstance(model, DiNAT)
