"""Helpers and constants shared by the tests: paths, the tiny configs, running ``tools/`` scripts.

Imported as ``from helpers import ...``: pytest puts ``tests/`` on ``sys.path`` (its default
``prepend`` import mode, as for ``conftest.py``). The fixtures built on these live in conftest.py.
"""
import contextlib
import functools
import http.server
import importlib.util
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Dict, Iterator, List, Optional

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOLS = REPO_ROOT / 'tools'
DATA_DIR = REPO_ROOT / 'tests' / 'data'  # its README.md says where each file comes from

# The README demo's config (UPerNet + small DiNAT), pointed at this session's sample data.
SAMPLE_SEG_CONFIG = REPO_ROOT / 'configs' / 'segmentation' / 'sample' / \
    'upernet_dinat_sample_ade20k.py'
SAMPLE_TRAIN_ITERS = 100

# The demo's UPerNet + small DiNAT, cut to 10 iterations (checkpoints at 5 and 10, validation at
# 10) for the tool tests: kill and resume, test.py, 2-process DDP. Fields: data_root and norm
# (the decode heads' norm: DDP uses SyncBN, which train.py turns into BN on CPU).
TINY_SEG_CONFIG = f"""\
_base_ = [{str(SAMPLE_SEG_CONFIG)!r}]
data_root = {{data_root!r}}
norm_cfg = dict(type={{norm!r}}, requires_grad=True)
model = dict(decode_head=dict(norm_cfg=norm_cfg), auxiliary_head=dict(norm_cfg=norm_cfg))
train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root))
val_dataloader = dict(dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
param_scheduler = [
    dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=10, by_epoch=False)
]
train_cfg = dict(max_iters=10, val_interval=10)
default_hooks = dict(
    logger=dict(interval=1), checkpoint=dict(interval=5, save_best=None))
"""

# Mask R-CNN from mmdet's own base configs, shrunk (ResNet-18 layout, 16 base channels,
# 32-wide FPN and heads, 3 classes) and trained for 4 iterations on the COCO-format sample.
TINY_DET_CONFIG = """\
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py', 'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py', 'mmdet::_base_/default_runtime.py'
]
data_root = {data_root!r} + '/'
metainfo = dict(classes=('stop sign', 'sports ball', 'kite'))
model = dict(
    backbone=dict(depth=18, base_channels=16, init_cfg=None),
    neck=dict(in_channels=[16, 32, 64, 128], out_channels=32),
    rpn_head=dict(in_channels=32, feat_channels=32),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=32),
        bbox_head=dict(in_channels=32, fc_out_channels=64, num_classes=3),
        mask_roi_extractor=dict(out_channels=32),
        mask_head=dict(in_channels=32, conv_out_channels=32, num_classes=3)),
    # fewer proposals and sampled RoIs: the images hold 1-4 objects
    train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=100),
                   rcnn=dict(sampler=dict(num=64))),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=100), rcnn=dict(max_per_img=20)))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo, pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=4, val_interval=4)
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=4)]
optim_wrapper = dict(optimizer=dict(lr=0.01))
default_hooks = dict(
    logger=dict(interval=1), checkpoint=dict(by_epoch=False, interval=4))
log_processor = dict(by_epoch=False)
env_cfg = dict(cudnn_benchmark=False)
randomness = dict(seed=0)
"""


def write_config(path: Path, template: str, **fields) -> str:
    """Write ``template`` filled with ``fields`` to ``path`` (parents created); the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(template.format(**fields))
    return str(path)


def free_port() -> int:
    """A TCP port free on localhost now (for a DDP rendezvous)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def run_script(script: str, args: List[str], env: Optional[Dict[str, str]] = None,
               timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a ``tools/`` script (python or bash) in a subprocess with this interpreter."""
    return subprocess.run(**script_command(script, args, env), capture_output=True, text=True,
                          timeout=timeout)


def script_command(script: str, args: List[str],
                   env: Optional[Dict[str, str]] = None) -> Dict[str, object]:
    """The ``subprocess`` arguments (args, cwd, env) that run a ``tools/`` script."""
    full_env = dict(os.environ)
    full_env['PYTHONPATH'] = os.pathsep.join(
        [str(REPO_ROOT)] + [p for p in [full_env.get('PYTHONPATH')] if p])
    full_env['PYTHON'] = sys.executable  # for dist_*.sh
    full_env['PYTHONUNBUFFERED'] = '1'  # keep the log of a killed run
    full_env.setdefault('OMP_NUM_THREADS', '1')  # 2 cores shared with other processes
    full_env.update(env or {})
    path = str(TOOLS / script)
    cmd = ['bash', path] if script.endswith('.sh') else [sys.executable, path]
    return dict(args=cmd + list(args), cwd=str(REPO_ROOT), env=full_env)


def load_tool(name: str) -> ModuleType:
    """A ``tools/`` script imported as a module (e.g. to call its ``main(argv)`` in-process)."""
    spec = importlib.util.spec_from_file_location(f'tools_{name}', TOOLS / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as an import would (torch.compile looks modules up there)
    spec.loader.exec_module(module)
    return module


def assert_ok(result: subprocess.CompletedProcess) -> None:
    """Fail with the tail of the tool's output when it did not exit with 0."""
    assert result.returncode == 0, (
        f'exit code {result.returncode}\n--- stdout ---\n{result.stdout[-4000:]}'
        f'\n--- stderr ---\n{result.stderr[-4000:]}')


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass  # keep request lines out of the test output


@contextlib.contextmanager
def serve(directory: Optional[Path] = None, handler: Optional[type] = None) -> Iterator[str]:
    """An http server on localhost, of the files of ``directory`` or with its own request
    ``handler`` class; yields its base URL."""
    if handler is None:
        handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f'http://127.0.0.1:{server.server_address[1]}'
    finally:
        server.shutdown()
        server.server_close()
