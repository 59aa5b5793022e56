"""Checkpoint layouts, conversion, strict loading, the conversion tool and the model zoo.

Hugging Face checkpoints are written by the real ``transformers`` DiNAT classes (in a subprocess
that hides the incompatible natten, see environment-notes.md), with every tensor overwritten by
seeded random values so that a swapped mapping cannot pass. Original-layout checkpoints are built
from the same tensors with the mapping written out below from the two model sources.
"""
import functools
import http.server
import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from dinat_backbone.apis.classification import read_eval_image
from dinat_backbone.models import DiNAT
from dinat_backbone.models.classifier import DiNATClassifier
from dinat_backbone.weights import (CheckpointKeyError, adapt_state_dict, check_variant,
                                    convert_huggingface, convert_to_backbone, convert_to_reference,
                                    detect_layout, diff_state_dict, infer_arch, load_pretrained,
                                    read_checkpoint, unwrap_checkpoint)
from dinat_backbone.weights.zoo import (IMAGENET_CHECKPOINTS, TASK_CHECKPOINTS, get_checkpoint_url,
                                        get_hf_url, get_pretrained, list_checkpoints,
                                        resolve_checkpoint)

from helpers import load_tool

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / 'data'
classify = load_tool('classify')
convert_checkpoint = load_tool('convert_checkpoint')

DEPTHS = [1, 1, 2, 1]
HEADS = [1, 2, 2, 4]
DILATIONS = [[1], [2], [1, 2], [1]]
KERNEL = 3
HF_CONFIG = dict(embed_dim=16, depths=DEPTHS, num_heads=HEADS, kernel_size=KERNEL,
                 dilations=DILATIONS, mlp_ratio=2.0, num_labels=10)
# name: (transformers class, layer scale, extra config)
HF_CASES = {
    'cls': ('DinatForImageClassification', 0.0, {}),
    'cls_layer_scale': ('DinatForImageClassification', 1e-5, {}),
    'model': ('DinatModel', 0.0, {}),
    'backbone_all': ('DinatBackbone', 0.0,
                     {'out_features': ['stage1', 'stage2', 'stage3', 'stage4']}),
    'backbone_default': ('DinatBackbone', 0.0, {}),
}
NORM_KEYS = {f'norm{i}.{p}' for i in range(4) for p in ('weight', 'bias')}

_HF_WRITER = r'''
import json, sys
from pathlib import Path
import torch
sys.modules['natten'] = None  # its current API breaks the module's import (environment-notes)
import transformers.models.dinat.modeling_dinat as modeling_dinat
modeling_dinat.requires_backends = lambda *args, **kwargs: None  # we never run forward
import transformers
from safetensors.torch import load_file

config, cases, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), Path(sys.argv[3])
for seed, (name, (cls_name, layer_scale, extra)) in enumerate(sorted(cases.items())):
    cfg = transformers.DinatConfig(**config, layer_scale_init_value=layer_scale, **extra)
    model = getattr(transformers, cls_name)(cfg)
    generator = torch.Generator().manual_seed(1000 + seed)
    with torch.no_grad():  # HF initialises norms, biases, rpb and both gammas alike
        for tensor in model.state_dict().values():
            tensor.copy_(torch.randn(tensor.shape, generator=generator))
    folder = out / name
    model.save_pretrained(folder)  # model.safetensors, as transformers writes it today
    torch.save(model.state_dict(), folder / 'pytorch_model.bin')  # as the hub's files
    saved = load_file(folder / 'model.safetensors')
    assert saved.keys() == model.state_dict().keys(), name
'''


def tiny_arch(layer_scale: float = 0.) -> dict:
    arch = dict(embed_dims=16, depths=DEPTHS, num_heads=HEADS, mlp_ratio=2.)
    if layer_scale:
        arch['layer_scale'] = layer_scale
    return arch


def tiny_dinat(layer_scale: float = 0., **kwargs) -> DiNAT:
    kwargs = {'kernel_size': KERNEL, 'dilations': DILATIONS, 'drop_path_rate': 0., **kwargs}
    torch.manual_seed(0)
    return DiNAT(arch=tiny_arch(layer_scale), **kwargs)


class _Recorder(dict):
    """A dict that remembers which keys were read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def expected_from_hf(hf_state: dict, layer_scale: bool, classifier: bool = False) -> dict:
    """The reference-layout tensors, written out module by module from the two model sources
    (transformers' modeling_dinat.py and the reference nat.py); checks that every HF tensor is
    used."""
    hf = _Recorder({k[len('dinat.'):] if k.startswith('dinat.') else k: v
                    for k, v in hf_state.items()})
    out = {}
    for i in range(2):
        for p in ('weight', 'bias'):
            out[f'patch_embed.proj.{i}.{p}'] = hf[f'embeddings.patch_embeddings.projection.{i}.{p}']
    for p in ('weight', 'bias'):
        out[f'patch_embed.norm.{p}'] = hf[f'embeddings.norm.{p}']
    for i, depth in enumerate(DEPTHS):
        for j in range(depth):
            src, dst = f'encoder.levels.{i}.layers.{j}.', f'levels.{i}.blocks.{j}.'
            for p in ('weight', 'bias'):
                out[dst + f'norm1.{p}'] = hf[src + f'layernorm_before.{p}']
                out[dst + f'attn.qkv.{p}'] = torch.cat(
                    [hf[src + f'attention.self.query.{p}'], hf[src + f'attention.self.key.{p}'],
                     hf[src + f'attention.self.value.{p}']])
                out[dst + f'attn.proj.{p}'] = hf[src + f'attention.output.dense.{p}']
                out[dst + f'norm2.{p}'] = hf[src + f'layernorm_after.{p}']
                out[dst + f'mlp.fc1.{p}'] = hf[src + f'intermediate.dense.{p}']
                out[dst + f'mlp.fc2.{p}'] = hf[src + f'output.dense.{p}']
            out[dst + 'attn.rpb'] = hf[src + 'attention.self.rpb']
            if layer_scale:  # HF multiplies attention by row 0 and the MLP by row 1
                out[dst + 'gamma1'] = hf[src + 'layer_scale_parameters'][0]
                out[dst + 'gamma2'] = hf[src + 'layer_scale_parameters'][1]
        if i < len(DEPTHS) - 1:
            out[f'levels.{i}.downsample.reduction.weight'] = \
                hf[f'encoder.levels.{i}.downsample.reduction.weight']
            for p in ('weight', 'bias'):
                out[f'levels.{i}.downsample.norm.{p}'] = \
                    hf[f'encoder.levels.{i}.downsample.norm.{p}']
    for stage in range(1, 5):  # DinatBackbone: stage_names are stem, stage1..stage4
        for p in ('weight', 'bias'):
            if f'hidden_states_norms.stage{stage}.{p}' in hf:
                out[f'norm{stage - 1}.{p}'] = hf[f'hidden_states_norms.stage{stage}.{p}']
    head = {'layernorm.weight': 'norm.weight', 'layernorm.bias': 'norm.bias',
            'classifier.weight': 'head.weight', 'classifier.bias': 'head.bias'}
    unused = set(hf) - hf.read
    assert unused <= set(head), f'HF tensors the expectation does not place: {unused}'
    if classifier:
        out.update({head[k]: hf[k] for k in unused})
    return out


def assert_same_tensors(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert got[key].shape == value.shape and torch.equal(got[key], value), key


@pytest.fixture(scope='module')
def hf_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('hf')
    subprocess.run([sys.executable, '-c', _HF_WRITER, json.dumps(HF_CONFIG), json.dumps(HF_CASES),
                    str(out)], check=True, cwd=out)
    return out


def hf_state(hf_dir: Path, case: str) -> dict:
    return torch.load(hf_dir / case / 'pytorch_model.bin', weights_only=True)


@pytest.fixture(scope='module')
def original_files(hf_dir, tmp_path_factory) -> dict:
    """The 'cls' weights in the original layout, stored in each of the published ways."""
    out = tmp_path_factory.mktemp('original')
    state = expected_from_hf(hf_state(hf_dir, 'cls'), layer_scale=False, classifier=True)
    variants = {'top_level': state, 'model': {'model': state},
                'state_dict': {'state_dict': state, 'epoch': 300, 'arch': 'dinat_tiny'},
                'ddp': {'state_dict': {'module.' + k: v for k, v in state.items()}}}
    files = {}
    for name, content in variants.items():
        files[name] = out / f'{name}.pth'
        torch.save(content, files[name])
    return files


# ---------------------------------------------------------------------------------------------
# Layout detection and conversion (pure functions)


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
    fixture = torch.load(DATA / 'reference_dinat_small_random.pt', weights_only=True)
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


# ---------------------------------------------------------------------------------------------
# Loading into the backbone


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


def _shape_only_state(model: torch.nn.Module) -> dict:
    # Zero-stride views: a full-size (Small, Base) state dict that costs a few bytes.
    return {k: torch.zeros(()).expand(v.shape) for k, v in model.state_dict().items()}


def test_wrong_variant_names_both_variants(tmp_path):
    with torch.device('meta'):  # shapes only: nothing is computed or allocated
        tiny, small, mini, base = (DiNAT(arch=a) for a in ('tiny', 'small', 'mini', 'base'))
        base_without_layer_scale = DiNAT(arch={k: v for k, v in DiNAT.arch_zoo['base'].items()
                                               if k != 'layer_scale'})
    path = tmp_path / 'small.pth'
    torch.save(_shape_only_state(small), path)
    with pytest.raises(ValueError) as info:
        load_pretrained(tiny, str(path))
    message = str(info.value)
    assert 'checkpoint looks like DiNAT-Small (embed_dims=96' in message
    assert 'model is DiNAT-Tiny (embed_dims=64' in message
    assert 'levels.0.blocks.0.attn.qkv.weight: (288, 96) vs (192, 64)' in message

    with pytest.raises(ValueError, match=r'checkpoint looks like DiNAT-Mini \(depths=\[3, 4, 6, '
                                         r'5\]\), model is DiNAT-Tiny \(depths=\[3, 4, 18, 5\]\)'):
        adapt_state_dict(_shape_only_state(mini), tiny)
    with pytest.raises(ValueError, match=r'checkpoint looks like DiNAT-Base \(layer_scale=True\), '
                                         r'model is an unlisted DiNAT variant '
                                         r'\(layer_scale=False\)'):
        adapt_state_dict(_shape_only_state(base), base_without_layer_scale)
    with pytest.raises(ValueError, match=r'DiNAT-Small .* expected DiNAT-Tiny'):
        check_variant(_shape_only_state(small), DiNAT.arch_zoo['tiny'], DiNAT.arch_zoo)
    check_variant(_shape_only_state(small), DiNAT.arch_zoo['small'], DiNAT.arch_zoo)


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
    handler = functools.partial(_QuietHandler, directory=str(hf_dir.parent))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    old_hub = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    try:
        base = f'http://127.0.0.1:{server.server_address[1]}'
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
        server.shutdown()
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# tools/convert_checkpoint.py


@pytest.mark.parametrize('source', ['original', 'cls_layer_scale', 'backbone_all'])
def test_convert_tool_round_trip_is_lossless(hf_dir, original_files, tmp_path, source):
    src = (original_files['state_dict'] if source == 'original'
           else hf_dir / source / 'model.safetensors')
    expected, _ = convert_to_backbone(read_checkpoint(str(src)))
    dst = tmp_path / 'out.pth'
    assert convert_checkpoint.main([str(src), str(dst)]) == 0
    saved = torch.load(dst, weights_only=False)
    assert set(saved) == {'state_dict', 'meta'}
    assert_same_tensors(saved['state_dict'], expected)
    assert saved['meta']['source_layout'] == ('original' if source == 'original'
                                              else 'huggingface')
    # converting the converted file changes nothing
    again = tmp_path / 'again.pth'
    assert convert_checkpoint.main([str(dst), str(again)]) == 0
    assert_same_tensors(torch.load(again, weights_only=False)['state_dict'], expected)
    # the prefixed form carries the same tensors, and loads as a backbone init too
    prefixed = tmp_path / 'prefixed.pth'
    assert convert_checkpoint.main([str(src), str(prefixed), '--prefix', 'backbone.']) == 0
    state = torch.load(prefixed, weights_only=False)['state_dict']
    assert_same_tensors({k[len('backbone.'):]: v for k, v in state.items()}, expected)
    model = tiny_dinat(layer_scale=1e-5 if source == 'cls_layer_scale' else 0.)
    report = load_pretrained(model, str(prefixed))
    assert report.stripped_prefixes == ['backbone.']


def test_convert_tool_command_line(hf_dir, tmp_path):
    dst = tmp_path / 'cli.pth'
    result = subprocess.run(
        [sys.executable, str(ROOT / 'tools' / 'convert_checkpoint.py'),
         str(hf_dir / 'cls' / 'pytorch_model.bin'), str(dst), '--keep-classifier'],
        capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'huggingface layout' in result.stdout
    saved = torch.load(dst, weights_only=False)['state_dict']
    assert_same_tensors(saved, expected_from_hf(hf_state(hf_dir, 'cls'), False, classifier=True))


def test_convert_tool_checks_the_arch(tmp_path):
    with torch.device('meta'):
        small = DiNAT(arch='small')
    src = tmp_path / 'small.pth'
    torch.save(_shape_only_state(small), src)
    with pytest.raises(ValueError, match='checkpoint looks like DiNAT-Small .* expected '
                                         'DiNAT-Mini'):
        convert_checkpoint.main([str(src), str(tmp_path / 'x.pth'), '--arch', 'mini'])
    assert not (tmp_path / 'x.pth').exists()


# ---------------------------------------------------------------------------------------------
# Model zoo


def test_model_zoo_tables():
    assert get_checkpoint_url('dinat_mini.in1k') == \
        'https://shi-labs.com/projects/dinat/checkpoints/imagenet1k/dinat_mini_in1k_224.pth'
    assert resolve_checkpoint('dinat_tiny.in1k').endswith('/imagenet1k/dinat_tiny_in1k_224.pth')
    assert resolve_checkpoint('/some/file.pth') == '/some/file.pth'
    assert get_hf_url('dinat_base.in1k') == \
        'https://huggingface.co/shi-labs/dinat-base-in1k-224/resolve/main/pytorch_model.bin'
    with pytest.raises(KeyError):
        get_checkpoint_url('dinat_huge.in1k')
    with pytest.raises(KeyError, match='no Hugging Face port'):
        get_hf_url('dinat_large.in22k')
    assert [(c.arch, c.top1, c.params_m) for c in IMAGENET_CHECKPOINTS.values()][:4] == [
        ('mini', 81.8, 20), ('tiny', 82.7, 28), ('small', 83.8, 51), ('base', 84.4, 90)]
    assert get_pretrained('dinat_large_384.in22k_ft_in1k').top1 == 87.4
    assert get_pretrained('dinat_large_384_k11.in22k_ft_in1k').kernel_size == 11
    assert all(c.url.startswith('https://shi-labs.com/projects/dinat/checkpoints/')
               and c.license == 'MIT' for c in list(IMAGENET_CHECKPOINTS.values())
               + list(TASK_CHECKPOINTS.values()))
    assert all(c.arch in DiNAT.arch_zoo for c in IMAGENET_CHECKPOINTS.values())

    assert len(TASK_CHECKPOINTS) == 13 and len(list_checkpoints()) == 13 + len(
        IMAGENET_CHECKPOINTS)
    configs = sorted(c.config for c in TASK_CHECKPOINTS.values())
    assert configs[:5] == [f'configs/detection/cascade-mask-rcnn_dinat-{a}_fpn_ms-crop-3x_coco.py'
                           for a in 'blmst']
    assert 'configs/segmentation/upernet_dinat-l_8xb2-160k_ade20k-640x640.py' in configs
    assert 'configs/segmentation/upernet_dinat-t_8xb2-160k_ade20k-512x512.py' in configs
    assert [c for c in configs if not (ROOT / c).is_file()] == []
    results = {(c.method, c.arch): (c.box_ap, c.mask_ap, c.miou, c.miou_ms)
               for c in TASK_CHECKPOINTS.values()}
    assert results[('Mask R-CNN', 'small')] == (49.3, 44.0, None, None)
    assert results[('Cascade Mask R-CNN', 'large')] == (55.3, 47.8, None, None)
    assert results[('UPerNet', 'mini')] == (None, None, 45.8, 47.2)
    assert results[('UPerNet', 'large')] == (None, None, 54.0, 54.9)
    assert TASK_CHECKPOINTS['upernet_dinat-l_8xb2-160k_ade20k-640x640'].pretrained == \
        'dinat_large.in22k'
    assert all(c.pretrained in IMAGENET_CHECKPOINTS for c in TASK_CHECKPOINTS.values())


# ---------------------------------------------------------------------------------------------
# Whole classifiers: DiNATClassifier and tools/classify.py


def reference_classifier(fixture: dict) -> DiNATClassifier:
    cfg = fixture['config']
    arch = dict(embed_dims=int(cfg['embed_dim']), depths=fixture['depths'].tolist(),
                num_heads=fixture['num_heads'].tolist(), mlp_ratio=float(cfg['mlp_ratio']),
                layer_scale=float(cfg['layer_scale']))
    return DiNATClassifier(arch=arch, num_classes=int(cfg['num_classes']),
                           kernel_size=int(cfg['kernel_size']),
                           dilations=[d.tolist() for d in fixture['dilations']])


def test_classifier_reproduces_the_reference_logits(tmp_path):
    """The original SHI-Labs classifier's own output (tests/data), from its checkpoint."""
    fixture = torch.load(DATA / 'reference_dinat_small_random.pt', weights_only=True)
    path = tmp_path / 'reference.pth'
    torch.save({'model': fixture['state_dict']}, path)
    model = reference_classifier(fixture).double().eval()
    report = model.load_checkpoint(str(path))
    assert report.missing_output_norms == [] and report.dropped_classifier == []
    assert len(report.loaded) == len(fixture['state_dict'])
    with torch.no_grad():
        logits = model(fixture['input'])
    torch.testing.assert_close(logits, fixture['logits'], rtol=0, atol=1e-10)


def tiny_classifier(**kwargs) -> DiNATClassifier:
    return DiNATClassifier(arch=tiny_arch(), num_classes=10, kernel_size=KERNEL,
                           dilations=DILATIONS, **kwargs)


def test_classifier_loads_both_published_layouts_whole(hf_dir, original_files):
    hf = hf_state(hf_dir, 'cls')
    states = []
    for source in (hf_dir / 'cls' / 'pytorch_model.bin', original_files['state_dict']):
        model = tiny_classifier(init_cfg=dict(type='Pretrained', checkpoint=str(source)))
        model.init_weights()
        states.append(model.state_dict())
    assert_same_tensors(states[0], states[1])
    state = states[0]
    assert torch.equal(state['backbone.norm3.weight'], hf['dinat.layernorm.weight'])
    assert torch.equal(state['head.weight'], hf['classifier.weight'])
    assert torch.equal(state['head.bias'], hf['classifier.bias'])
    for key, value in expected_from_hf(hf, False).items():
        assert torch.equal(state['backbone.' + key], value), key


def test_classifier_refuses_what_is_not_a_matching_classifier(hf_dir):
    with pytest.raises(KeyError, match=r'not a whole classifier .*no head\.weight, head\.bias'):
        tiny_classifier().load_checkpoint(str(hf_dir / 'model' / 'pytorch_model.bin'))
    with pytest.raises(KeyError, match=r"output norms of a dense-prediction backbone "
                                       r"\(\['norm3\.bias', 'norm3\.weight'\]\)"):
        tiny_classifier().load_checkpoint(str(hf_dir / 'backbone_default' / 'model.safetensors'))
    model = DiNATClassifier(arch=tiny_arch(), num_classes=1000, kernel_size=KERNEL,
                            dilations=DILATIONS)
    with pytest.raises(ValueError, match='its head has 10 classes and 128 features, the model '
                                         '1000 and 128'):
        model.load_checkpoint(str(hf_dir / 'cls' / 'pytorch_model.bin'))


def _write_image(path: Path) -> None:
    from PIL import Image
    generator = torch.Generator().manual_seed(3)
    pixels = torch.randint(0, 256, (150, 170, 3), generator=generator, dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(path)


def test_classify_tool_prints_the_top5(tmp_path, capsys):
    fixture = torch.load(DATA / 'reference_dinat_small_random.pt', weights_only=True)
    checkpoint, image, labels = tmp_path / 'ref.pth', tmp_path / 'img.png', tmp_path / 'labels.txt'
    torch.save(fixture['state_dict'], checkpoint)
    _write_image(image)
    names = [f'name-{i}' for i in range(10)]
    labels.write_text('\n'.join(names) + '\n')
    dilations = json.dumps([d.tolist() for d in fixture['dilations']])
    assert classify.main([str(image), '--checkpoint', str(checkpoint), '--size', '96',
                          '--dilations', dilations, '--labels', str(labels)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()[-5:]

    model = reference_classifier(fixture).eval()
    model.load_checkpoint(str(checkpoint))
    x = read_eval_image(str(image), 96)
    assert x.shape == (1, 3, 96, 96)
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    scores, indices = probs.topk(5)
    assert lines == [f'{r}. {names[i]} (index {i}): {s:.4f}'
                     for r, (s, i) in enumerate(zip(scores.tolist(), indices.tolist()), 1)]


def test_classify_tool_reads_labels_of_a_hugging_face_snapshot(hf_dir, tmp_path, capsys):
    image = tmp_path / 'img.png'
    _write_image(image)
    assert classify.main([str(image), '--checkpoint', str(hf_dir / 'cls'), '--size', '64',
                          '--dilations', json.dumps(DILATIONS), '--topk', '3']) == 0
    lines = capsys.readouterr().out.strip().splitlines()[-3:]
    assert [line.split(' (index')[0] for line in lines] == \
        [f'{r}. LABEL_{line.split("(index ")[1].split(")")[0]}' for r, line in
         enumerate(lines, 1)]


def test_classify_tool_names_imagenet_classes_by_default(tmp_path, capsys):
    """A 1000-class head that favours index 281 prints ImageNet's name for it, "tabby, tabby cat"
    (the DiNAT model card's answer for COCO image 39769 with the real Mini weights)."""
    model = DiNATClassifier(arch=tiny_arch(), num_classes=1000, kernel_size=KERNEL,
                            dilations=DILATIONS)
    model.init_weights()
    state = {k.replace('backbone.norm3.', 'norm.').replace('backbone.', ''): v
             for k, v in model.state_dict().items()}
    state['head.weight'] = torch.zeros_like(state['head.weight'])
    state['head.bias'] = torch.zeros(1000).index_fill_(0, torch.tensor([281, 282, 285]), 5.0)
    state['head.bias'][281] = 9.0
    checkpoint, image = tmp_path / 'cat.pth', tmp_path / 'img.png'
    torch.save({'model': state}, checkpoint)
    _write_image(image)
    assert classify.main([str(image), '--checkpoint', str(checkpoint), '--size', '64',
                          '--dilations', json.dumps(DILATIONS), '--topk', '3']) == 0
    lines = capsys.readouterr().out.strip().splitlines()[-3:]
    assert lines[0].startswith('1. tabby, tabby cat (index 281)')
    assert {line.split(' (index')[0][3:] for line in lines[1:]} == {'tiger cat', 'Egyptian cat'}


def test_diff_state_dict_names_every_difference():
    """The one strict comparison behind backbone and task-checkpoint loading."""
    target = {'a.weight': torch.zeros(4, 13, 13), 'norm0.weight': torch.zeros(2),
              'b.bias': torch.zeros(3), 'c': torch.zeros(1)}
    state_dict = {'a.weight': torch.zeros(4, 11, 11), 'b.bias': torch.zeros(3),
                  'extra': torch.zeros(1)}
    diff = diff_state_dict(state_dict, target, may_be_missing=lambda k: k.startswith('norm'))
    assert diff and (diff.missing, diff.allowed_missing, diff.unexpected) == (
        ['c'], ['norm0.weight'], ['extra'])
    assert diff.details() == ('shape mismatch (checkpoint vs model): a.weight: (4, 11, 11) vs '
                              '(4, 13, 13); missing from the checkpoint: c; unexpected in the '
                              'checkpoint: extra')
    assert not diff_state_dict({'c': torch.zeros(1)}, {'c': torch.ones(1)})
