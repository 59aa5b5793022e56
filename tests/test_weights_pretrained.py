"""ImageNet weights into the backbone (``weights.pretrained``, ``weights.arch``): ``init_weights``
from every layout and from URLs, which keys may be missing, clear errors for wrong keys and wrong
variants, and the rpb tables resized for another kernel size."""
import pytest
import torch
import torch.nn.functional as F

from dinat_backbone.models import DiNAT
from dinat_backbone.weights import (CheckpointKeyError, adapt_state_dict, check_variant,
                                    convert_to_backbone, load_pretrained)

from helpers import load_tool, serve
from tiny_checkpoints import (DEPTHS, assert_same_tensors, expected_from_hf, hf_state,
                              shape_only_state, tiny_dinat)

convert_checkpoint = load_tool('convert_checkpoint')

NORM_KEYS = {f'norm{i}.{p}' for i in range(4) for p in ('weight', 'bias')}


def test_init_weights_loads_every_layout_identically(hf_dir, original_files, tmp_path):
    """DiNAT(init_cfg=Pretrained) gives the same weights from every published layout."""
    converted = tmp_path / 'converted.pth'
    assert convert_checkpoint.main([str(hf_dir / 'cls' / 'pytorch_model.bin'),
                                    str(converted)]) == 0
    # (source, HF case whose weights it holds); 'model' was written with another seed.
    sources = [(str(p), 'cls') for p in original_files.values()] + [
        (str(hf_dir / 'cls' / 'pytorch_model.bin'), 'cls'),
        (str(hf_dir / 'cls' / 'model.safetensors'), 'cls'), (str(hf_dir / 'cls'), 'cls'),
        (str(converted), 'cls'), (str(hf_dir / 'model' / 'pytorch_model.bin'), 'model')]
    expected = {case: expected_from_hf(hf_state(hf_dir, case), False) for case in ('cls', 'model')}
    states = []
    for source, case in sources:
        model = tiny_dinat(init_cfg=dict(type='Pretrained', checkpoint=source))
        model.init_weights()
        state = model.state_dict()
        for key, value in expected[case].items():
            assert torch.equal(state[key], value), (source, key)
        for key in NORM_KEYS:  # left at their initialisation, as in the reference
            width = 16 * 2**int(key[4])
            init = torch.ones(width) if key.endswith('weight') else torch.zeros(width)
            assert torch.equal(state[key], init), (source, key)
        if case == 'cls':
            states.append(state)
    for state in states[1:]:
        assert_same_tensors(state, states[0])


def test_layer_scale_and_output_norms_load(hf_dir):
    model = tiny_dinat(layer_scale=1e-5)
    load_pretrained(model, str(hf_dir / 'cls_layer_scale' / 'model.safetensors'))
    hf = hf_state(hf_dir, 'cls_layer_scale')
    gamma = hf['dinat.encoder.levels.2.layers.1.layer_scale_parameters']
    assert torch.equal(model.levels[2].blocks[1].gamma1.data, gamma[0])
    assert torch.equal(model.levels[2].blocks[1].gamma2.data, gamma[1])

    model = tiny_dinat()
    report = load_pretrained(model, str(hf_dir / 'backbone_all' / 'pytorch_model.bin'))
    assert report.missing_output_norms == []
    hf = hf_state(hf_dir, 'backbone_all')
    for i in range(4):
        assert torch.equal(getattr(model, f'norm{i}').weight.data,
                           hf[f'hidden_states_norms.stage{i + 1}.weight'])


@pytest.mark.parametrize('out_indices', [(0, 1, 2, 3), (1, 3), (2, )])
def test_only_output_norms_may_be_missing(original_files, out_indices):
    model = tiny_dinat(out_indices=out_indices)
    report = load_pretrained(model, str(original_files['top_level']))
    assert set(report.missing_output_norms) == {f'norm{i}.{p}' for i in out_indices
                                                for p in ('weight', 'bias')}
    assert set(report.loaded) | set(report.missing_output_norms) == set(model.state_dict())


def test_unused_output_norms_of_a_task_backbone_are_reported(hf_dir, tmp_path):
    path = tmp_path / 'task.pth'
    backbone, _ = convert_to_backbone(hf_state(hf_dir, 'backbone_all'))
    torch.save({'state_dict': {'backbone.' + k: v for k, v in backbone.items()},
                'meta': {}}, path)
    report = load_pretrained(tiny_dinat(out_indices=(1, 2, 3)), str(path))
    assert sorted(report.dropped_other) == ['norm0.bias', 'norm0.weight']
    assert report.missing_output_norms == []


def test_missing_and_unexpected_keys_raise_naming_them(original_files, tmp_path):
    state, _ = convert_to_backbone(torch.load(original_files['top_level'], weights_only=True))
    broken = dict(state)
    del broken['levels.1.downsample.reduction.weight']
    broken['levels.0.blocks.0.attn.extra_bias'] = torch.zeros(3)
    path = tmp_path / 'broken.pth'
    torch.save(broken, path)
    with pytest.raises(CheckpointKeyError) as info:
        load_pretrained(tiny_dinat(), str(path))
    message = str(info.value)
    assert 'missing from the checkpoint: levels.1.downsample.reduction.weight;' in message
    assert 'unexpected in the checkpoint: levels.0.blocks.0.attn.extra_bias' in message
    assert isinstance(info.value, KeyError)

    model = tiny_dinat()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    del broken['levels.0.blocks.0.attn.extra_bias']
    with pytest.raises(KeyError, match='levels.1.downsample.reduction.weight'):
        adapt_state_dict(broken, model)
    # nothing was loaded: no silent partial load
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_hidden_states_norm_of_the_stem_is_unexpected(hf_dir):
    state = dict(hf_state(hf_dir, 'backbone_default'))
    state['hidden_states_norms.stem.weight'] = torch.ones(16)
    with pytest.raises(KeyError, match=r'unexpected in the checkpoint: '
                                       r'hidden_states_norms\.stem\.weight'):
        adapt_state_dict(convert_to_backbone(state)[0], tiny_dinat())


def test_wrong_variant_names_both_variants(tmp_path):
    with torch.device('meta'):  # shapes only: nothing is computed or allocated
        tiny, small, mini, base = (DiNAT(arch=a) for a in ('tiny', 'small', 'mini', 'base'))
        base_without_layer_scale = DiNAT(arch={k: v for k, v in DiNAT.arch_zoo['base'].items()
                                               if k != 'layer_scale'})
    path = tmp_path / 'small.pth'
    torch.save(shape_only_state(small), path)
    with pytest.raises(ValueError) as info:
        load_pretrained(tiny, str(path))
    message = str(info.value)
    assert 'checkpoint looks like DiNAT-Small (embed_dims=96' in message
    assert 'model is DiNAT-Tiny (embed_dims=64' in message
    assert 'levels.0.blocks.0.attn.qkv.weight: (288, 96) vs (192, 64)' in message

    with pytest.raises(ValueError, match=r'checkpoint looks like DiNAT-Mini \(depths=\[3, 4, 6, '
                                         r'5\]\), model is DiNAT-Tiny \(depths=\[3, 4, 18, 5\]\)'):
        adapt_state_dict(shape_only_state(mini), tiny)
    with pytest.raises(ValueError, match=r'checkpoint looks like DiNAT-Base \(layer_scale=True\), '
                                         r'model is an unlisted DiNAT variant '
                                         r'\(layer_scale=False\)'):
        adapt_state_dict(shape_only_state(base), base_without_layer_scale)
    with pytest.raises(ValueError, match=r'DiNAT-Small .* expected DiNAT-Tiny'):
        check_variant(shape_only_state(small), DiNAT.arch_zoo['tiny'], DiNAT.arch_zoo)
    check_variant(shape_only_state(small), DiNAT.arch_zoo['small'], DiNAT.arch_zoo)


def test_kernel_change_interpolates_rpb_bicubically(original_files):
    state, _ = convert_to_backbone(torch.load(original_files['top_level'], weights_only=True))
    model = tiny_dinat(kernel_size=5, dilations=[[1], [1], [1, 1], [1]])
    report = load_pretrained(model, str(original_files['top_level']))
    assert report.rpb_resize == (3, 5) and len(report.interpolated_rpb) == sum(DEPTHS)
    rpb = state['levels.2.blocks.1.attn.rpb']
    got = model.levels[2].blocks[1].attn.rpb.data
    assert got.shape == (2, 9, 9)
    torch.testing.assert_close(got, F.interpolate(rpb[None], size=(9, 9), mode='bicubic',
                                                  align_corners=False)[0])
    # bicubic with half-pixel centres keeps a constant table constant
    constant = {**state, 'levels.0.blocks.0.attn.rpb': torch.full((1, 5, 5), 0.25)}
    fitted, _ = adapt_state_dict(constant, model)
    torch.testing.assert_close(fitted['levels.0.blocks.0.attn.rpb'], torch.full((1, 9, 9), 0.25))


def test_loading_from_urls(hf_dir, original_files, tmp_path):
    """http(s) checkpoints: .pth through mmengine, .bin/.safetensors downloaded and cached;
    two Hugging Face repos' files of the same name must not share a cache entry."""
    old_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    try:
        with serve(hf_dir.parent) as base:
            original_url = f'{base}/{original_files["model"].parent.name}/model.pth'
            cls_url = f'{base}/{hf_dir.name}/cls/model.safetensors'
            reference = tiny_dinat()
            load_pretrained(reference, str(original_files['model']))
            for url in (original_url, cls_url, f'{base}/{hf_dir.name}/cls/pytorch_model.bin'):
                model = tiny_dinat()
                load_pretrained(model, url)
                assert_same_tensors(model.state_dict(), reference.state_dict())
            other = tiny_dinat()
            load_pretrained(other, f'{base}/{hf_dir.name}/model/pytorch_model.bin')
        assert not torch.equal(other.patch_embed.norm.weight, reference.patch_embed.norm.weight)
        cached = sorted(p.name for p in (tmp_path / 'hub' / 'checkpoints').rglob('*')
                        if p.is_file())
        assert len([n for n in cached if n.endswith('pytorch_model.bin')]) == 2, cached
    finally:
        torch.hub.set_dir(old_hub)
