"""Checkpoint layouts (``weights.layouts``, ``weights.hf``): detection, unwrapping and conversion
of the original, Hugging Face and our own layouts, on tiny checkpoints written by the real
``transformers`` classes (``tiny_checkpoints.py``)."""
import pytest
import torch

from dinat_backbone.weights import (convert_huggingface, convert_to_backbone, convert_to_reference,
                                    detect_layout, infer_arch, read_checkpoint, unwrap_checkpoint)

from helpers import DATA_DIR
from tiny_checkpoints import HF_CASES, assert_same_tensors, expected_from_hf, hf_state


def test_transformers_writes_the_layout_we_convert(hf_dir):
    """Key sets of the real transformers classes: prefix, classifier, stage norms."""
    cls, model = hf_state(hf_dir, 'cls'), hf_state(hf_dir, 'model')
    assert all(k.startswith(('dinat.', 'classifier.')) for k in cls)
    assert {'classifier.weight', 'classifier.bias', 'dinat.layernorm.weight'} <= set(cls)
    assert 'layernorm.weight' in model and not any(k.startswith('dinat.') for k in model)
    assert 'dinat.encoder.levels.0.layers.0.layer_scale_parameters' in \
        hf_state(hf_dir, 'cls_layer_scale')
    default = hf_state(hf_dir, 'backbone_default')
    assert [k for k in default if k.startswith('hidden_states_norms')] == \
        ['hidden_states_norms.stage4.weight', 'hidden_states_norms.stage4.bias']
    assert 'layernorm.weight' not in default


@pytest.mark.parametrize('case', sorted(HF_CASES))
@pytest.mark.parametrize('fmt', ['pytorch_model.bin', 'model.safetensors'])
def test_huggingface_tensors_map_to_the_right_place(hf_dir, case, fmt):
    hf = hf_state(hf_dir, case)
    checkpoint = read_checkpoint(str(hf_dir / case / fmt))
    assert detect_layout(checkpoint) == 'huggingface'
    converted, report = convert_to_backbone(checkpoint)
    layer_scale = HF_CASES[case][1] > 0
    assert_same_tensors(converted, expected_from_hf(hf, layer_scale))
    classifier = {'cls': {'classifier.weight', 'classifier.bias', 'layernorm.weight',
                          'layernorm.bias'},
                  'model': {'layernorm.weight', 'layernorm.bias'}}
    expected_dropped = classifier.get(case.replace('_layer_scale', ''), set())
    assert set(report.dropped_classifier) == expected_dropped
    assert report.layout == 'huggingface'
    assert report.stripped_prefixes == (['dinat.'] if case.startswith('cls') else [])


def test_qkv_concatenates_query_key_value_in_that_order():
    dim = 4
    hf = {f'encoder.levels.0.layers.0.attention.self.{p}.weight': torch.full((dim, dim), float(i))
          for i, p in enumerate(('query', 'key', 'value'))}
    qkv = convert_huggingface(hf)['levels.0.blocks.0.attn.qkv.weight']
    assert qkv[:dim].eq(0).all() and qkv[dim:2 * dim].eq(1).all() and qkv[2 * dim:].eq(2).all()
    del hf['encoder.levels.0.layers.0.attention.self.value.weight']
    with pytest.raises(KeyError, match=r'levels\.0\.blocks\.0\.attn\.qkv\.weight: no value'):
        convert_huggingface(hf)


def test_keep_classifier_renames_it_to_the_reference_names(hf_dir):
    hf = hf_state(hf_dir, 'cls')
    converted, _ = convert_to_reference(hf)
    assert_same_tensors(converted, expected_from_hf(hf, False, classifier=True))
    assert convert_huggingface(hf).keys() == expected_from_hf(hf, False).keys()


def test_unknown_huggingface_keys_are_kept_so_loading_names_them():
    hf = {'embeddings.norm.weight': torch.ones(2), 'hidden_states_norms.stem.weight': torch.ones(2)}
    assert set(convert_huggingface(hf)) == {'patch_embed.norm.weight',
                                            'hidden_states_norms.stem.weight'}


@pytest.mark.parametrize('name', ['top_level', 'model', 'state_dict', 'ddp'])
def test_original_layout_in_every_container(original_files, hf_dir, name):
    checkpoint = torch.load(original_files[name], weights_only=True)
    assert detect_layout(checkpoint) == 'original'
    converted, report = convert_to_backbone(checkpoint)
    assert_same_tensors(converted, expected_from_hf(hf_state(hf_dir, 'cls'), False))
    assert sorted(report.dropped_classifier) == ['head.bias', 'head.weight', 'norm.bias',
                                                 'norm.weight']
    assert report.container == {'top_level': [], 'model': ['model'], 'state_dict': ['state_dict'],
                                'ddp': ['state_dict']}[name]
    assert report.stripped_prefixes == (['module.'] if name == 'ddp' else [])


def test_reference_fixture_is_original_layout():
    fixture = torch.load(DATA_DIR / 'reference_dinat_small_random.pt', weights_only=True)
    assert detect_layout(fixture['state_dict']) == 'original'
    converted, _ = convert_to_backbone(fixture)  # found under 'state_dict'
    assert infer_arch(converted) == dict(
        embed_dims=16, depths=fixture['depths'].tolist(), num_heads=fixture['num_heads'].tolist(),
        mlp_ratio=2.0, layer_scale=True, kernel_size=int(fixture['config']['kernel_size']))


@pytest.mark.parametrize('source', ['original', 'cls', 'cls_layer_scale', 'model',
                                    'backbone_all'])
def test_conversion_is_idempotent(original_files, hf_dir, source):
    checkpoint = (torch.load(original_files['model'], weights_only=True) if source == 'original'
                  else hf_state(hf_dir, source))
    once, _ = convert_to_backbone(checkpoint)
    twice, report = convert_to_backbone(once)
    assert report.layout == 'ours' and detect_layout(once) == 'ours'
    assert report.dropped_classifier == [] and report.renamed == 0
    assert list(twice) == list(once) and all(twice[k] is once[k] for k in once)
    again, _ = convert_to_reference(convert_to_reference(checkpoint)[0])
    assert_same_tensors(again, convert_to_reference(checkpoint)[0])


def test_whole_model_checkpoint_keeps_the_backbone(original_files, hf_dir):
    backbone, _ = convert_to_backbone(torch.load(original_files['model'], weights_only=True))
    detector = {'meta': {'mmdet_version': '2.28'},
                'state_dict': {**{'backbone.' + k: v for k, v in backbone.items()},
                               'neck.lateral.weight': torch.zeros(2),
                               'rpn_head.conv.weight': torch.zeros(2)}}
    converted, report = convert_to_backbone(detector)
    assert_same_tensors(converted, backbone)
    assert report.layout == 'ours' and report.stripped_prefixes == ['backbone.']
    assert sorted(report.dropped_other) == ['neck.lateral.weight', 'rpn_head.conv.weight']


def test_not_a_checkpoint_raises():
    with pytest.raises(ValueError, match='Not a DiNAT checkpoint'):
        detect_layout({'conv1.weight': torch.zeros(1)})
    with pytest.raises(ValueError, match='No state dict found'):
        unwrap_checkpoint({'epoch': 3, 'optimizer': {}})
    with pytest.raises(TypeError):
        unwrap_checkpoint([torch.zeros(1)])
