"""The package's layers import with only what they need (issue: ops standalone).

Each case runs in a fresh interpreter in which the heavier packages are blocked
(``sys.modules[name] = None`` makes their import raise ImportError), as on a GPU machine with
torch alone.
"""
import subprocess
import sys
import textwrap

import pytest

from dinat_backbone._moved import MOVED_MODULES

OPENMMLAB = ('mmcv', 'mmengine', 'mmdet', 'mmseg')
TOOLBOXES = ('mmdet', 'mmseg')


def run_blocked(blocked, body: str) -> subprocess.CompletedProcess:
    script = f'import sys\nfor name in {tuple(blocked)!r}:\n    sys.modules[name] = None\n'
    return subprocess.run([sys.executable, '-c', script + textwrap.dedent(body)],
                          capture_output=True, text=True, timeout=300)


def test_ops_and_models_run_with_torch_alone():
    """The GPU benchmark's machine has torch and no OpenMMLab: the operator runs, and DiNAT
    builds, loads its own state dict and trains a step with the torch-only stand-ins."""
    result = run_blocked(OPENMMLAB, """
        import torch
        import dinat_backbone
        from dinat_backbone.models import DiNAT
        from dinat_backbone.ops import na2d
        q, k, v = torch.randn(3, 1, 9, 10, 2, 8, dtype=torch.float64).unbind(0)
        rpb = torch.randn(2, 5, 5, dtype=torch.float64)
        out = na2d(q, k, v, kernel_size=3, dilation=(2, 3), rpb=rpb, backend='torch')
        print(tuple(out.shape))
        arch = dict(embed_dims=16, depths=[1, 2, 1, 1], num_heads=[1, 1, 2, 2], mlp_ratio=2.0)
        model = DiNAT(arch=arch, kernel_size=3, dilations=[[1], [1, 2], [1], [1]],
                      drop_path_rate=0.5)
        model.init_weights()
        model.train()
        outs = model(torch.randn(2, 3, 64, 64))
        sum(o.square().mean() for o in outs).backward()
        assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
        model.eval()
        twin = DiNAT(arch=arch, kernel_size=3, dilations=[[1], [1, 2], [1], [1]]).eval()
        twin.load_state_dict(model.state_dict())
        image = torch.randn(1, 3, 64, 64)
        print(all(torch.equal(a, b) for a, b in zip(model(image), twin(image))))
        print([tuple(o.shape) for o in outs])
        print(sorted(m for m in sys.modules if m.split('.')[0] in ('mmcv', 'mmengine')
                     and sys.modules[m] is not None))
        DiNAT(arch=arch, kernel_size=3, dilations=[[1], [1, 2], [1], [1]],
              norm_cfg=dict(type='BN'))  # only LN without mmcv: a clear ImportError
    """)
    lines = result.stdout.strip().splitlines()
    assert lines[:2] == ['(1, 9, 10, 2, 8)', 'True'], result.stderr
    assert '(2, 16, 16, 16)' in lines[2] and '(2, 128, 2, 2)' in lines[2], lines
    assert lines[3] == '[]'  # nothing of mmcv/mmengine imported
    assert "ImportError: norm type 'BN' needs mmcv, which is not installed" in result.stderr


def test_models_need_only_mmengine_and_mmcv():
    result = run_blocked(TOOLBOXES, """
        import torch
        from dinat_backbone.models import DiNAT
        model = DiNAT(arch=dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                                mlp_ratio=2.0),
                      kernel_size=3, dilations=[[1], [1], [1], [1]])
        print([tuple(o.shape) for o in model(torch.randn(1, 3, 64, 64))])
    """)
    assert result.returncode == 0, result.stderr
    assert '(1, 16, 16, 16)' in result.stdout and '(1, 128, 2, 2)' in result.stdout


@pytest.mark.parametrize('scope', TOOLBOXES)
def test_import_registers_with_each_installed_toolbox(scope):
    other = next(s for s in TOOLBOXES if s != scope)
    result = run_blocked((other, ), f"""
        import dinat_backbone
        from {scope}.registry import MODELS
        print(MODELS.get('DiNAT') is dinat_backbone.DiNAT)
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == 'True'


def test_module_paths_of_the_flat_layout_still_import():
    script = textwrap.dedent("""
        import importlib
        from dinat_backbone._moved import MOVED_MODULES
        for old, new in MOVED_MODULES.items():
            module = importlib.import_module(f'dinat_backbone.{old}')
            real = importlib.import_module(f'dinat_backbone.{new}')
            assert module is real and real.__spec__.name == real.__name__, old
        from dinat_backbone.features import FeatureExtractor
        from dinat_backbone.apis.features import FeatureExtractor as Same
        assert FeatureExtractor is Same
        print('ok')
    """)
    result = subprocess.run([sys.executable, '-W', 'always::FutureWarning', '-c', script],
                            capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == 'ok', result.stderr
    assert 'dinat_backbone.features moved to dinat_backbone.apis.features' in result.stderr
    assert result.stderr.count('FutureWarning') == len(MOVED_MODULES)
