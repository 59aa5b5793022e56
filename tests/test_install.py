"""Installing the package into an environment that already holds a supported stack changes
nothing: setup.cfg states ranges, and the exact pins live in constraints.txt only."""
import json
import subprocess
import sys

from helpers import REPO_ROOT


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
