"""Installing the package into an environment that already holds a supported stack changes
nothing: setup.cfg states ranges, and the exact pins live in constraints.txt only."""
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from helpers import DATA_DIR, REPO_ROOT

ALL_EXTRAS = '[mmdet,mmseg,natten,triton]'
# The Requires-Dist of real torch and triton wheels (the file names its source).
WHEEL_REQUIRES = json.loads((DATA_DIR / 'torch_triton_requires_dist.json').read_text())
# The floor of install_requires' torch range, and two later CUDA releases with the triton each
# pins (torch 2.5 -> triton 3.1.0, 2.8 -> 3.4.0, 2.11 -> 3.6.0).
USER_TORCHES = ['2.5.0', '2.8.0', '2.11.0']


def test_install_into_the_pinned_environment_changes_nothing():
    # --no-index: anything the installed stack does not satisfy would have to be downloaded,
    # which fails here instead of silently replacing the user's torch or mmcv.
    result = subprocess.run(
        [sys.executable, '-m', 'pip', 'install', '--dry-run', '--no-index', '--no-build-isolation',
         '--disable-pip-version-check', '--quiet', '--report', '-', '.[mmdet,mmseg,natten,triton]'],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    would_install = [item['metadata']['name'] for item in json.loads(result.stdout)['install']]
    assert would_install == ['dinat-backbone']

    check = subprocess.run([sys.executable, '-m', 'pip', 'check'], capture_output=True,
                           text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr


def test_setup_cfg_states_ranges_and_constraints_pin_them():
    from setuptools.config.setupcfg import read_configuration
    options = read_configuration(str(REPO_ROOT / 'setup.cfg'))['options']
    requirements = list(options['install_requires'])
    requirements += [r for extra in options['extras_require'].values() for r in extra]
    assert not [r for r in requirements if '==' in r], 'exact pins belong in constraints.txt'

    pins = dict(line.split('==') for line in (REPO_ROOT / 'constraints.txt').read_text().split('\n')
                if line and not line.startswith('#'))
    for name in ('torch', 'mmcv', 'mmengine', 'mmdet', 'mmsegmentation', 'natten', 'triton'):
        assert any(key.lower() == name for key in pins), name


def write_standin_wheel(folder: Path, name: str, release: str, requires=()) -> None:
    """A wheel of metadata only: what pip's resolver reads, without the real download."""
    dist = f'{name.replace("-", "_")}-{release}'
    info = f'{dist}.dist-info'
    files = {
        f'{info}/METADATA': ''.join([f'Metadata-Version: 2.1\nName: {name}\nVersion: {release}\n',
                                     *(f'Requires-Dist: {r}\n' for r in requires)]),
        f'{info}/WHEEL': ('Wheel-Version: 1.0\nGenerator: tests/test_install.py\n'
                          'Root-Is-Purelib: true\nTag: py3-none-any\n')}
    files[f'{info}/RECORD'] = ''.join(f'{path},,\n' for path in files) + f'{info}/RECORD,,\n'
    with zipfile.ZipFile(folder / f'{dist}-py3-none-any.whl', 'w') as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)


def standins_for(torch_release: str) -> dict:
    """``{name: version}`` of a user's CUDA torch environment: torch, and every requirement
    of it that pins a version (its triton, the CUDA libraries) or that this environment lacks
    (then at the lowest version it accepts). Everything else is this environment's own."""
    wanted = {'torch': torch_release}
    pending = [f'torch=={torch_release}']
    while pending:
        key = pending.pop()
        for line in WHEEL_REQUIRES['distributions'][key]['requires_dist']:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate({'extra': ''}):
                continue
            pins = [s.version for s in requirement.specifier if s.operator in ('==', '>=', '~=')]
            pinned = any(s.operator == '==' for s in requirement.specifier)
            try:
                satisfied = requirement.specifier.contains(version(requirement.name), True)
            except PackageNotFoundError:
                satisfied = False
            if pinned or not satisfied:
                key = f'{requirement.name}=={pins[0] if pins else "0"}'
                wanted[requirement.name] = key.split('==')[1]
                if key in WHEEL_REQUIRES['distributions']:
                    pending.append(key)
    return wanted


@pytest.fixture(scope='module')
def standin_index(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A --find-links folder with the stand-ins of every user environment tested."""
    folder = tmp_path_factory.mktemp('standins')
    written = set()
    for torch_release in USER_TORCHES:
        for name, release in standins_for(torch_release).items():
            if (name, release) not in written:
                written.add((name, release))
                requires = WHEEL_REQUIRES['distributions'].get(f'{name}=={release}', {})
                write_standin_wheel(folder, name, release, requires.get('requires_dist', []))
    return folder


def user_environment(root: Path, standin_index: Path, torch_release: str) -> Path:
    """A venv with this environment's packages (the OpenMMLab stack, natten, numpy, ...) in
    which the stand-ins of a CUDA torch and what it pins take the place of ours; its python."""
    subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(root)], check=True,
                   timeout=120)
    python = root / 'bin' / 'python'
    site = sysconfig.get_path('purelib', vars={'base': str(root), 'platbase': str(root)})
    # Appended after the venv's own site-packages: the stand-ins installed there come first.
    (Path(site) / 'outer_environment.pth').write_text(sysconfig.get_path('purelib') + '\n')
    pins = [f'{name}=={release}' for name, release in standins_for(torch_release).items()]
    result = subprocess.run(
        [str(python), '-m', 'pip', '--disable-pip-version-check', '--isolated', 'install',
         '--no-index', '--no-deps', '--find-links', str(standin_index), *pins],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return python


def versions_in(python: Path, *names: str) -> list:
    script = f'from importlib.metadata import version; print(*map(version, {names!r}))'
    return subprocess.run([str(python), '-c', script], capture_output=True, text=True,
                          check=True, timeout=60).stdout.split()


def would_install(python: Path, project: Path, standin_index: Path) -> list:
    """What ``pip install -e PROJECT[all runtime extras]`` would install or replace, offered
    the stand-ins (a newer torch with its triton among them) and nothing else."""
    result = subprocess.run(
        [str(python), '-m', 'pip', '--disable-pip-version-check', '--isolated', 'install',
         '--dry-run', '--no-index', '--find-links', str(standin_index), '--no-build-isolation',
         '--quiet', '--report', '-', f'{project}{ALL_EXTRAS}'],
        cwd=project, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        return [line for line in result.stderr.splitlines() if 'ERROR' in line]
    return [f"{item['metadata']['name']}=={item['metadata']['version']}"
            for item in json.loads(result.stdout)['install']]


@pytest.mark.parametrize('torch_release', USER_TORCHES)
def test_install_keeps_the_users_cuda_torch_and_its_triton(tmp_path, standin_index,
                                                           torch_release):
    python = user_environment(tmp_path / 'env', standin_index, torch_release)
    pinned_triton = standins_for(torch_release)['triton']
    assert versions_in(python, 'torch', 'triton') == [torch_release, pinned_triton]
    assert would_install(python, REPO_ROOT, standin_index) == ['dinat-backbone==0.1.0']


def test_old_triton_extra_replaced_the_users_torch(tmp_path, standin_index):
    """Negative control: with the former ``triton>=3.6,<3.8`` extra, a torch 2.8 environment
    (triton 3.4.0) would get torch 2.11 and triton 3.6.0 instead of its own."""
    project = tmp_path / 'project'
    shutil.copytree(REPO_ROOT, project, ignore=shutil.ignore_patterns(
        '.git', '.venv', 'work_dirs', 'build', '*.egg-info', '__pycache__', 'third_party'))
    setup_cfg = project / 'setup.cfg'
    current = next(line for line in setup_cfg.read_text().splitlines()
                   if line.strip().startswith('triton>='))
    setup_cfg.write_text(setup_cfg.read_text().replace(current, '    triton>=3.6,<3.8'))
    python = user_environment(tmp_path / 'env', standin_index, '2.8.0')
    changes = would_install(python, project, standin_index)
    assert 'torch==2.11.0' in changes and 'triton==3.6.0' in changes, changes


OLD_TRITON = """
import warnings
import triton
triton.__version__ = '3.4.0'  # what torch 2.8's CUDA wheels pin (its version is all that's read)
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from dinat_backbone.ops import na2d, select_backend
with FakeTensorMode():
    query = torch.empty(1, 16, 16, 2, 32, device='cuda')
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    print('auto:', *(select_backend(query, None, kernel_size=7) for _ in range(2)))
for warning in caught:
    print('warning:', warning.message)
q = torch.zeros(1, 9, 9, 1, 4)
try:
    na2d(q, q, q, 3, backend='triton')
except RuntimeError as err:
    print('forced:', err)
"""


def test_triton_older_than_the_kernels_runs_tiled_with_one_warning():
    """The `triton` extra keeps a torch's own older triton; `auto` then runs the tiled
    implementation on CUDA tensors and says why once, and forcing 'triton' says what it needs."""
    from dinat_backbone.ops.triton_na2d import MIN_TRITON
    assert MIN_TRITON > (3, 4)
    result = subprocess.run([sys.executable, '-c', OLD_TRITON], cwd=REPO_ROOT, text=True,
                            capture_output=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert 'auto: torch torch' in lines
    warnings_seen = [line for line in lines if line.startswith('warning:')]
    assert warnings_seen == ['warning: dinat_backbone: triton 3.4.0 is older than the Triton '
                             'kernels need (3.6); CUDA tensors use the tiled PyTorch '
                             'implementation instead.']
    assert "forced: backend='triton' needs the triton package, version 3.6 or newer" in lines[-1]
