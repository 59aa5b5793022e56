"""Tiny DiNAT checkpoints in the published layouts, and the mapping between them written out.

Hugging Face checkpoints are written by the real ``transformers`` DiNAT classes (in a subprocess
that hides the incompatible natten, see environment-notes.md), with every tensor overwritten by
seeded random values so that a swapped mapping cannot pass. Original-layout checkpoints are built
from the same tensors with the mapping written out below from the two model sources
(:func:`expected_from_hf`). The ``hf_dir`` and ``original_files`` fixtures (conftest.py) write
them once per session.
"""
import json
import subprocess
import sys
from pathlib import Path
from typing import Dict

import torch

from dinat_backbone.models import DiNAT

# The tiny variant every checkpoint here holds: two blocks in level 2, dilated levels 1 and 2.
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
# Run in a subprocess by write_hf_checkpoints: argv = HF_CONFIG, HF_CASES (JSON), the folder.
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
    """The ``arch`` dict of the tiny variant (``layer_scale`` 0: none)."""
    arch = dict(embed_dims=16, depths=DEPTHS, num_heads=HEADS, mlp_ratio=2.)
    if layer_scale:
        arch['layer_scale'] = layer_scale
    return arch


def tiny_dinat(layer_scale: float = 0., **kwargs) -> DiNAT:
    """The tiny backbone, seeded, without drop path; ``kwargs`` override DiNAT's arguments."""
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
    """The same keys and, for each, a bit-identical tensor."""
    assert sorted(got) == sorted(expected)
    for key, value in expected.items():
        assert got[key].shape == value.shape and torch.equal(got[key], value), key


def write_hf_checkpoints(out: Path) -> None:
    """One folder per :data:`HF_CASES` entry in ``out``: ``model.safetensors`` (as
    ``save_pretrained`` writes it) and ``pytorch_model.bin`` (as the hub's files)."""
    subprocess.run([sys.executable, '-c', _HF_WRITER, json.dumps(HF_CONFIG), json.dumps(HF_CASES),
                    str(out)], check=True, cwd=out)


def hf_state(hf_dir: Path, case: str) -> dict:
    """The state dict of the Hugging Face checkpoint ``case`` (a key of :data:`HF_CASES`)."""
    return torch.load(hf_dir / case / 'pytorch_model.bin', weights_only=True)


def write_original_files(hf_dir: Path, out: Path) -> Dict[str, Path]:
    """The 'cls' weights in the original layout, stored in each of the published ways."""
    state = expected_from_hf(hf_state(hf_dir, 'cls'), layer_scale=False, classifier=True)
    variants = {'top_level': state, 'model': {'model': state},
                'state_dict': {'state_dict': state, 'epoch': 300, 'arch': 'dinat_tiny'},
                'ddp': {'state_dict': {'module.' + k: v for k, v in state.items()}}}
    files = {}
    for name, content in variants.items():
        files[name] = out / f'{name}.pth'
        torch.save(content, files[name])
    return files


def shape_only_state(model: torch.nn.Module) -> dict:
    """Zero-stride views: a full-size (Small, Base) state dict that costs a few bytes."""
    return {k: torch.zeros(()).expand(v.shape) for k, v in model.state_dict().items()}
