"""Safe checkpoint loading: a pickle that runs code is refused through every entry point and
runs only with the explicit per-call opt-in; what real checkpoints hold still loads; downloads
are cached per full URL, verified by the hash in their name and written atomically.

The malicious file is a valid DiNAT checkpoint plus one entry whose ``__reduce__`` calls
``os.system('touch MARKER')``: the marker file appearing is the proof that code ran.
"""
import argparse
import asyncio
import contextlib
import contextvars
import hashlib
import http.server
import io
import json
import logging.handlers
import os
import pickle
import re
import shlex
import shutil
import sys
import threading
import types
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.runner.checkpoint import CheckpointLoader

from dinat_backbone.apis.features import build_backbone
from dinat_backbone.models import DiNAT
from dinat_backbone.models.classifier import DiNATClassifier
from dinat_backbone.weights import load_pretrained, read_checkpoint
from dinat_backbone.weights.safe_loading import (UnsafeCheckpointError, allowed_globals,
                                                 download_checkpoint, load_checkpoint_file,
                                                 trust_checkpoints)

from helpers import load_tool, run_script, serve

ARCH = dict(embed_dims=16, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], mlp_ratio=2.)
DILATIONS = [[1], [2], [1, 2], [1]]
OFFENDER = 'posix.system'  # what the payload's pickle names (os.system on Linux)


def tiny_dinat(**kwargs) -> DiNAT:
    return DiNAT(arch=ARCH, kernel_size=3, dilations=DILATIONS, drop_path_rate=0., **kwargs)


def tiny_classifier(**kwargs) -> DiNATClassifier:
    return DiNATClassifier(arch=ARCH, num_classes=10, kernel_size=3, dilations=DILATIONS,
                           **kwargs)


class _RunsCode:
    """Pickles as a call of ``os.system``: unpickling it creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {shlex.quote(str(self.marker))}', )


def reference_state() -> dict:
    """A classifier in the original SHI-Labs layout (backbone, ``norm.*``, ``head.*``)."""
    torch.manual_seed(0)
    state = {k: v for k, v in tiny_classifier().state_dict().items()}
    state = {('norm.' + k[len('backbone.norm3.'):] if k.startswith('backbone.norm3.') else
              k[len('backbone.'):] if k.startswith('backbone.') else k): v
             for k, v in state.items()}
    return state


def write_malicious(path: Path, legacy: bool = False) -> Path:
    """A valid checkpoint with a payload; returns the marker the payload would create."""
    marker = path.parent / f'{path.name}.ran'
    torch.save({'state_dict': reference_state(), 'payload': _RunsCode(marker)}, path,
               _use_new_zipfile_serialization=not legacy)
    return marker


def assert_refused(error: BaseException, marker: Path) -> None:
    message = str(error)
    assert OFFENDER in message, message
    assert 'trusted=True' in message and '--trust-checkpoint' in message, message
    assert not marker.exists(), 'the payload ran'


@pytest.fixture
def hub(tmp_path):
    """torch.hub's directory (the download cache) under ``tmp_path``."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / 'hub'))
    yield tmp_path / 'hub' / 'checkpoints'
    torch.hub.set_dir(old)


# ---------------------------------------------------------------------------------------------
# The malicious file through the package's and mmengine's entry points


def _mmengine_load_checkpoint(model: nn.Module, path: str) -> dict:
    from mmengine.runner import load_checkpoint
    return load_checkpoint(model, path)


def _mmengine_module(path: str) -> nn.Module:
    from mmengine.model import BaseModule

    class Whole(BaseModule):  # any model with mmengine's own Pretrained initialisation
        def __init__(self):
            super().__init__(init_cfg=dict(type='Pretrained', checkpoint=path))
            self.backbone = tiny_dinat()

    return Whole()


ENTRY_POINTS = {
    'read_checkpoint': lambda path: read_checkpoint(path),
    'load_pretrained': lambda path: load_pretrained(tiny_dinat(), path),
    'DiNAT init_cfg': lambda path: tiny_dinat(
        init_cfg=dict(type='Pretrained', checkpoint=path)).init_weights(),
    'mmengine init_cfg': lambda path: _mmengine_module(path).init_weights(),
    'DiNATClassifier.load_checkpoint': lambda path: tiny_classifier().load_checkpoint(path),
    'DiNATClassifier init_cfg': lambda path: tiny_classifier(
        init_cfg=dict(type='Pretrained', checkpoint=path)).init_weights(),
    'build_backbone': lambda path: build_backbone('mini', path),
    'mmengine load_checkpoint': lambda path: _mmengine_load_checkpoint(tiny_dinat(), path),
}


@pytest.mark.parametrize('legacy', [False, True], ids=['zip', 'legacy format'])
@pytest.mark.parametrize('entry', sorted(ENTRY_POINTS))
def test_code_in_a_checkpoint_does_not_run(entry, legacy, tmp_path):
    path = tmp_path / 'evil.pth'
    marker = write_malicious(path, legacy)
    with pytest.raises(UnsafeCheckpointError) as info:
        ENTRY_POINTS[entry](str(path))
    assert_refused(info.value, marker)
    # the allow-list is given per call, never added process-wide
    assert not set(allowed_globals()) & set(torch.serialization.get_safe_globals())


class _FetchesAttribute:
    """Pickles as ``getattr(numpy.ndarray, 'tofile')``: getattr is allowed for HistoryBuffer's
    methods only (it could otherwise reach any attribute, e.g. ``getattr.__self__``)."""

    def __reduce__(self):
        return getattr, (np.ndarray, 'tofile')


def test_getattr_fetches_only_history_buffer_methods(tmp_path):
    torch.save({'method': _FetchesAttribute()}, tmp_path / 'getattr.pth')
    with pytest.raises(UnsafeCheckpointError, match=r"getattr\(<class '\S+'>, 'tofile'\); only "
                                                    r"HistoryBuffer's"):
        load_checkpoint_file(str(tmp_path / 'getattr.pth'))


def test_empty_and_garbage_files_say_what_they_are(tmp_path):
    (tmp_path / 'empty.pth').touch()
    with pytest.raises(ValueError, match='Checkpoint file is empty'):
        read_checkpoint(str(tmp_path / 'empty.pth'))
    (tmp_path / 'garbage.pth').write_bytes(bytes(range(200, 256)) * 10)
    with pytest.raises(UnsafeCheckpointError, match='not a torch.save file, is corrupt'):
        read_checkpoint(str(tmp_path / 'garbage.pth'))


def test_hugging_face_snapshot_folder(tmp_path):
    folder = tmp_path / 'snapshot'
    folder.mkdir()
    marker = write_malicious(folder / 'pytorch_model.bin')
    with pytest.raises(UnsafeCheckpointError) as info:
        load_pretrained(tiny_dinat(), str(folder))
    assert_refused(info.value, marker)


def test_urls_through_the_package_and_mmengine(tmp_path, hub):
    from mmengine.runner.checkpoint import CheckpointLoader
    marker = write_malicious(tmp_path / 'evil.pth')
    with serve(tmp_path) as base:
        for load in (read_checkpoint, CheckpointLoader.load_checkpoint):
            with pytest.raises(UnsafeCheckpointError) as info:
                load(f'{base}/evil.pth')
            assert_refused(info.value, marker)


def test_the_opt_in_runs_the_code_per_call_only(tmp_path):
    from mmengine.runner import load_checkpoint
    path = tmp_path / 'evil.pth'
    marker = write_malicious(path)
    report = load_pretrained(tiny_dinat(), str(path), trusted=True)
    assert marker.exists() and len(report.loaded) > 0  # ran, and the weights loaded
    marker.unlink()
    with pytest.raises(UnsafeCheckpointError):  # the opt-in did not outlive its call
        read_checkpoint(str(path))
    assert not marker.exists()

    model = tiny_dinat()
    with trust_checkpoints():  # mmengine's loading (load_from, resume, init_cfg)
        load_checkpoint(model, str(path))
    assert marker.exists()
    marker.unlink()
    with trust_checkpoints(False):
        with pytest.raises(UnsafeCheckpointError):
            load_checkpoint(model, str(path))
    assert not marker.exists()


def _generator_block_exited_out_of_order(load):
    """A generator paused inside its block while another block opens and both exit, the
    generator's first: resetting the context variable alone restored the generator's opt-in."""
    def trusting():
        with trust_checkpoints():
            yield
    paused = trusting()
    next(paused)
    with trust_checkpoints():
        paused.close()
    return load()


def _task_created_in_the_block(load):
    async def later():
        await asyncio.sleep(0)
        return load()

    async def main():
        with trust_checkpoints():
            task = asyncio.get_running_loop().create_task(later())  # copies the context
        return await task  # runs after the block

    return asyncio.run(main())


def _context_copied_in_the_block(load):
    with trust_checkpoints():
        context = contextvars.copy_context()
    return context.run(load)


def _thread_started_in_the_block(load):
    outcome, block_done = {}, threading.Event()

    def run():
        block_done.wait()
        try:
            outcome['value'] = load()
        except Exception as error:
            outcome['error'] = error

    with trust_checkpoints():
        thread = threading.Thread(target=run)
        thread.start()
    block_done.set()
    thread.join()
    if 'error' in outcome:
        raise outcome['error']
    return outcome['value']


OUTSIDE_THE_BLOCK = {  # each runs the load outside a `with trust_checkpoints():` block
    'generator block exited out of order': _generator_block_exited_out_of_order,
    'asyncio task created in the block': _task_created_in_the_block,
    'context copied in the block': _context_copied_in_the_block,
    'thread started in the block': _thread_started_in_the_block,
}


@pytest.mark.parametrize('case', sorted(OUTSIDE_THE_BLOCK))
def test_the_opt_in_ends_with_its_block(case, tmp_path):
    path = tmp_path / 'evil.pth'
    marker = write_malicious(path)
    with pytest.raises(UnsafeCheckpointError) as info:
        OUTSIDE_THE_BLOCK[case](lambda: read_checkpoint(str(path)))
    assert_refused(info.value, marker)


def test_the_opt_in_reaches_what_runs_in_the_block(tmp_path):
    """Generators resumed and coroutines awaited in the block, and a block inside a
    contextlib.contextmanager (as the tools' ``loading_checkpoints``) or a paused generator."""
    path = tmp_path / 'evil.pth'
    marker = write_malicious(path)

    def loads():
        yield read_checkpoint(str(path))

    async def load():
        await asyncio.sleep(0)
        return read_checkpoint(str(path))

    @contextlib.contextmanager
    def wrapped():
        with trust_checkpoints():
            yield

    generator = loads()  # made outside, resumed inside
    with trust_checkpoints():
        assert 'payload' in next(generator)
        assert marker.exists()
        marker.unlink()
        assert 'payload' in asyncio.run(load())
    assert marker.exists()
    marker.unlink()
    with wrapped():
        assert 'payload' in read_checkpoint(str(path))
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UnsafeCheckpointError):
        read_checkpoint(str(path))
    assert not marker.exists()


def test_a_damaged_safetensors_in_a_snapshot_falls_back_to_the_bin(tmp_path):
    from mmengine.logging import MMLogger
    from hostile_checkpoints import damaged_safetensors
    folder = tmp_path / 'snapshot'
    folder.mkdir()
    damaged_safetensors(folder / 'model.safetensors')
    torch.save(reference_state(), folder / 'pytorch_model.bin')
    warnings = logging.handlers.BufferingHandler(10 ** 6)  # never flushes
    logger = MMLogger.get_current_instance()
    logger.addHandler(warnings)
    try:
        assert _same(read_checkpoint(str(folder)), reference_state())
    finally:
        logger.removeHandler(warnings)
    assert [r.getMessage() for r in warnings.buffer if r.levelno >= logging.WARNING] == [
        f'Cannot read {folder / "model.safetensors"}: it is not a valid safetensors file (damaged '
        'or truncated?): Error while deserializing header: invalid JSON in header: invalid type: '
        'integer `1`, expected string or map at line 1 column 16 Reading '
        f'{folder / "pytorch_model.bin"} instead.']
    (folder / 'pytorch_model.bin').write_bytes(b'not a checkpoint')
    with pytest.raises(UnsafeCheckpointError, match=r'pytorch_model.bin: .* \(tried after: '
                                                    r'Cannot read .*model.safetensors'):
        read_checkpoint(str(folder))


# ---------------------------------------------------------------------------------------------
# What real checkpoints hold still loads, without the opt-in


def _same(a, b) -> bool:
    """Deep equality of what two loads of one checkpoint returned."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if hasattr(a, '__dict__') and not callable(a):
        return type(a) is type(b) and _same(vars(a), vars(b))
    return type(a) is type(b) and a == b


def _toy_runner(work_dir: Path, max_iters: int, **kwargs):
    """A real mmengine Runner (linear model, validation with a numpy metric, best checkpoint)."""
    from mmengine.evaluator import BaseMetric
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    class Linear(BaseModel):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(2, 1)

        def forward(self, inputs, targets, mode='tensor'):
            out = self.linear(inputs)
            if mode == 'loss':
                return {'loss': F.mse_loss(out, targets)}
            return list(zip(out, targets))

    class MSE(BaseMetric):
        def process(self, data_batch, data_samples):
            self.results += [float(((o - t) ** 2).sum()) for o, t in data_samples]

        def compute_metrics(self, results):
            return dict(mse=np.float64(np.mean(results)))  # numpy scalars in the message hub

    generator = torch.Generator().manual_seed(0)
    data = [dict(inputs=torch.randn(2, generator=generator),
                 targets=torch.randn(1, generator=generator)) for _ in range(8)]
    loader = dict(dataset=data, sampler=dict(type='DefaultSampler', shuffle=False),
                  batch_size=2, collate_fn=dict(type='default_collate'))
    return Runner(
        model=Linear(), work_dir=str(work_dir), experiment_name=f'{work_dir.name}_{max_iters}',
        train_dataloader=loader, val_dataloader=loader, val_evaluator=[MSE()],
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=2),
        val_cfg=dict(), optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.01)),
        param_scheduler=dict(type='LinearLR', start_factor=0.5, by_epoch=False, end=4),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False,
                                           save_best='mse', rule='less')),
        default_scope='mmengine', **kwargs)


def test_a_runner_checkpoint_loads_and_resumes(tmp_path):
    _toy_runner(tmp_path, max_iters=2).train()
    path = tmp_path / 'iter_2.pth'
    # Plain weights_only=True refuses it (HistoryBuffer, numpy): the allow-list is what reads it.
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    safe = load_checkpoint_file(str(path))
    assert _same(safe, torch.load(path, weights_only=False))
    assert isinstance(safe['message_hub']['runtime_info']['best_score'], np.float64)

    resumed = _toy_runner(tmp_path, max_iters=4, resume=True, load_from=str(path))
    resumed.train()
    assert resumed.iter == 4
    history = resumed.message_hub.get_scalar('train/loss').data[0]
    assert len(history) == 4  # the 2 logged before the checkpoint came back with it


def test_published_layouts_load_without_the_opt_in(tmp_path):
    """timm-trained ImageNet files keep their command line (argparse.Namespace), the amp
    scaler and a numpy metric; mmcv 1.x task files (legacy format) plain metadata."""
    state = reference_state()
    timm_style = dict(state_dict=state, epoch=299, arch='dinat_mini', version=2,
                      args=argparse.Namespace(model='dinat_mini', lr=1e-3, drop_path=0.1),
                      amp_scaler=dict(scale=65536.0, growth_factor=2.0, backoff_factor=0.5,
                                      growth_interval=2000, _growth_tracker=10),
                      metric=np.float64(81.8), optimizer={'state': {}, 'param_groups': []})
    torch.save(timm_style, tmp_path / 'timm.pth')
    loaded = read_checkpoint(str(tmp_path / 'timm.pth'))
    assert _same(loaded, timm_style)
    assert len(load_pretrained(tiny_dinat(), str(tmp_path / 'timm.pth')).loaded) > 0

    mmcv1 = dict(meta=dict(CLASSES=('a', 'b'), PALETTE=[[1, 2, 3], [4, 5, 6]],
                           mmseg_version='0.20.2+abc', config='model = dict()', epoch=1,
                           iter=160000, fp16=dict(loss_scaler=dict(scale=512.0))),
                 state_dict={'backbone.' + k: v for k, v in state.items()})
    torch.save(mmcv1, tmp_path / 'mmcv1.pth', _use_new_zipfile_serialization=False)
    assert _same(read_checkpoint(str(tmp_path / 'mmcv1.pth')), mmcv1)


def test_numpy_values_of_every_plain_kind_load_as_pickled(tmp_path):
    """numpy values are rebuilt by our code from their pickled description: every plain kind,
    byte order, layout and structure comes back equal, with its dtype, and shared stays
    shared."""
    shared = np.arange(3, dtype=np.int16)
    values = dict(
        numbers=[np.array([True]), np.arange(6, dtype='>i4').reshape(2, 3), np.uint8(7),
                 np.float16(0.5), np.array([1 + 2j], np.complex64), np.longdouble(1.25)],
        text=[np.array([b'ab'], 'S3'), np.array(['ab'], 'U3'), np.str_('x')],
        times=[np.array(['2020-01-01'], 'M8[D]'), np.array([3], 'm8[2s]'), np.array([1], 'm8')],
        structured=np.ones(2, [('x', '<f4'), ('y', '>i2', (2, )), ('z', [('a', 'u1')])]),
        aligned=np.zeros(2, np.dtype([('a', 'f4'), ('b', 'i1')], align=True)),
        titled=np.zeros(1, np.dtype({'names': ['a'], 'formats': ['f8'], 'titles': ['A']})),
        sub_array=np.zeros(2, ('f4', (2, 3))), fortran=np.asfortranarray(np.eye(3)),
        empty=np.zeros((0, 4)), dtypes=[np.dtype('>f8'), np.dtype([('a', 'i8')])],
        shared=(shared, shared))
    torch.save(values, tmp_path / 'numpy.pth')
    loaded = load_checkpoint_file(str(tmp_path / 'numpy.pth'))
    assert _same(loaded, torch.load(tmp_path / 'numpy.pth', weights_only=False))
    assert loaded['shared'][0] is loaded['shared'][1]


# ---------------------------------------------------------------------------------------------
# Downloads


def test_cache_is_keyed_by_the_full_url(tmp_path, hub):
    from mmengine.runner.checkpoint import CheckpointLoader
    served = tmp_path / 'served'
    contents = {}
    for folder, value in (('a', 1.), ('b', 2.)):
        (served / folder).mkdir(parents=True)
        contents[folder] = {'w': torch.full((2, ), value)}
        torch.save(contents[folder], served / folder / 'w.bin')
    with serve(served) as base:
        for load in (read_checkpoint, CheckpointLoader.load_checkpoint):
            for folder in ('a', 'b', 'a'):
                assert _same(load(f'{base}/{folder}/w.bin'), contents[folder]), (load, folder)
    cached = sorted(str(p.relative_to(hub)) for p in hub.rglob('*') if p.is_file())
    assert len(cached) == 2 and {Path(p).name for p in cached} == {'w.bin'}, cached


def test_a_hash_in_the_file_name_is_verified(tmp_path, hub):
    served = tmp_path / 'served'
    served.mkdir()
    torch.save({'w': torch.ones(2)}, served / 'good.pth')
    digest = hashlib.sha256((served / 'good.pth').read_bytes()).hexdigest()
    (served / 'good.pth').rename(served / f'w-{digest[:10]}.pth')
    wrong = 'badc0ffee0'  # the name promises another file
    torch.save({'w': torch.zeros(2)}, served / f'w-{wrong}.pth')
    with serve(served) as base:
        assert torch.equal(read_checkpoint(f'{base}/w-{digest[:10]}.pth')['w'], torch.ones(2))
        with pytest.raises(RuntimeError, match=f'w-{wrong}.pth is corrupt or not the file'):
            download_checkpoint(f'{base}/w-{wrong}.pth')
        # a name with a number that is no hash (fewer than 8 hex digits) is not checked
        torch.save({'w': torch.ones(1)}, served / 'dinat-mini-224.pth')
        assert read_checkpoint(f'{base}/dinat-mini-224.pth')['w'].shape == (1, )
    files = sorted(p.name for p in hub.rglob('*') if p.is_file())
    assert files == sorted(['dinat-mini-224.pth', f'w-{digest[:10]}.pth']), files  # no partial


# ---------------------------------------------------------------------------------------------
# The tools (subprocesses; they fail at load time without the flag)

TOOLS = {  # name: (script, arguments with {ckpt}, {image}, {config}, {tmp})
    'convert_checkpoint.py': ('convert_checkpoint.py', ['{ckpt}', '{tmp}/out.pth']),
    'convert_checkpoint.py --task': ('convert_checkpoint.py',
                                     ['{ckpt}', '{tmp}/out.pth', '--task']),
    'classify.py': ('classify.py', ['{image}', '--checkpoint', '{ckpt}']),
    'extract_features.py': ('extract_features.py',
                            ['mini', '--checkpoint', '{ckpt}', '--input', '{image}', '--out',
                             '{tmp}/features', '--no-progress']),
    'test.py': ('test.py', ['{config}', '{ckpt}', '--work-dir', '{tmp}/work']),
    'train.py --resume': ('train.py',
                          ['{config}', '--work-dir', '{tmp}/work', '--resume', '{ckpt}']),
}


@pytest.fixture(scope='module')
def tool_runs(tmp_path_factory, tiny_seg_config) -> dict:
    """Each tool run (a subprocess, as users run it) on its own malicious file: name ->
    (its directory, arguments, marker, completed process). The runs are started together:
    each spends most of its time importing the stack, and the suite runs one test at a time
    on machines with more than one core."""
    import cv2
    image = tmp_path_factory.mktemp('image') / 'a.png'
    cv2.imwrite(str(image), np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    runs = {}
    for name, (script, template) in TOOLS.items():
        tmp = tmp_path_factory.mktemp('tool')
        marker = write_malicious(tmp / 'evil.pth')
        args = [a.format(ckpt=tmp / 'evil.pth', image=image, config=tiny_seg_config, tmp=tmp)
                for a in template]
        runs[name] = (tmp, args, marker)
    with ThreadPoolExecutor(max_workers=3) as pool:  # ~1 GB each
        done = {name: pool.submit(run_script, TOOLS[name][0], args)
                for name, (_, args, _) in runs.items()}
    return {name: (*runs[name], future.result()) for name, future in done.items()}


@pytest.mark.parametrize('tool', sorted(TOOLS))
def test_tools_refuse_and_opt_in(tool, tool_runs):
    """Refused: exit status and message of the subprocess. Opt-in: the same command line with
    --trust-checkpoint, in-process (``main(argv)``) to save another start-up of the stack."""
    tmp, args, marker, refused = tool_runs[tool]
    assert refused.returncode != 0
    assert_refused(refused.stderr, marker)

    script = TOOLS[tool][0]
    try:
        outcome = load_tool(script[:-len('.py')]).main(args + ['--trust-checkpoint'])
    except (Exception, SystemExit) as error:  # after loading, the payload's 0 may not fit
        outcome = error
    assert marker.exists(), outcome
    assert 'Refused to unpickle' not in str(outcome)
    if script == 'convert_checkpoint.py':  # a valid checkpoint beside the payload: converted
        assert outcome == 0 and (tmp / 'out.pth').is_file()


# ---------------------------------------------------------------------------------------------
# Every scheme of mmengine's CheckpointLoader (those it has, any it adds, a user's own)


def _user_scheme_buffer(filename, map_location=None):  # as pavi/s3 do: bytes in memory
    with open(filename[len('user-buffer://'):], 'rb') as file:
        return torch.load(io.BytesIO(file.read()), map_location, weights_only=False)


def _user_scheme_hub(filename, map_location=None):  # torch.hub's downloader and loader
    return torch.hub.load_state_dict_from_url('http://' + filename[len('user-hub://'):],
                                              map_location=map_location, weights_only=False)


USER_SCHEMES = {'user-buffer://': _user_scheme_buffer, 'user-hub://': _user_scheme_hub}


def _scheme_source(prefix: str, folder: Path, base: str, monkeypatch) -> str:
    """A name under ``prefix`` that resolves to ``folder/ckpt.pth`` (served at ``base``): the
    name tables, the pavi client and the petrel backend point at it (no network)."""
    import mmengine.fileio.io
    from mmengine.fileio.backends import BaseStorageBackend, registry_utils
    from mmengine.runner import checkpoint as mmengine_checkpoint
    url = f'{base}/ckpt.pth'

    class Bucket(BaseStorageBackend):  # an s3/petrel store holding ckpt.pth
        def __init__(self, **kwargs):
            pass

        def get(self, filepath):
            return (folder / Path(filepath).name).read_bytes()

        get_text = None  # not used by checkpoint loading

    class Model:  # what pavi.modelcloud.get returns
        name = 'ckpt.pth'

        def download(self, target):
            shutil.copy(folder / 'ckpt.pth', target)

    sources = {
        '': lambda: str(folder / 'ckpt.pth'),
        'http://': lambda: url,
        'user-buffer://': lambda: f'user-buffer://{folder}/ckpt.pth',
        'user-hub://': lambda: url.replace('http://', 'user-hub://'),
        'pavi://': lambda: (monkeypatch.setitem(sys.modules, 'pavi', types.SimpleNamespace(
            modelcloud=types.SimpleNamespace(get=lambda path: Model()))), 'pavi://a/ckpt.pth'),
        r'(\S+\:)?s3://': lambda: (
            monkeypatch.setitem(registry_utils.backends, 'petrel', Bucket),
            monkeypatch.setattr(mmengine.fileio.io, 'backend_instances', {}),
            'open-mmlab:s3://bucket/ckpt.pth'),
        'torchvision://': lambda: (monkeypatch.setattr(
            mmengine_checkpoint, 'get_torchvision_models', lambda: {'net': url}),
            'torchvision://net'),
        'open-mmlab://': lambda: (monkeypatch.setenv('MMENGINE_HOME', str(folder)), (
            folder / 'open_mmlab.json').write_text(json.dumps({'net': url})),
            'open-mmlab://net'),
        'mmcls://': lambda: (monkeypatch.setattr(mmengine_checkpoint, 'get_mmcls_models',
                                                 lambda: {'net': url}), 'mmcls://net'),
        'open-mmlab:// (a file in MMENGINE_HOME)': lambda: (
            monkeypatch.setenv('MMENGINE_HOME', str(folder)),
            (folder / 'open_mmlab.json').write_text(json.dumps({'net': 'ckpt.pth'})),
            'openmmlab://net'),
    }
    # the same loader under another prefix
    aliases = {'https://': 'http://', r'(\S+\:)?petrel://': r'(\S+\:)?s3://',
               'modelzoo://': 'torchvision://', 'openmmlab://': 'open-mmlab://'}
    assert aliases.get(prefix, prefix) in sources, \
        f'mmengine has a new scheme {prefix!r}: add a row here to test it'
    source = sources[aliases.get(prefix, prefix)]()
    source = source if isinstance(source, str) else source[-1]
    if prefix in aliases:  # e.g. https: no TLS server here; the dispatch of prefix, called
        assert CheckpointLoader._schemes[prefix] is CheckpointLoader._schemes[aliases[prefix]]
    return source


def _schemes_to_test():
    """mmengine's schemes as registered at run time (a new one fails until it has a row in
    _scheme_source), a user's own, and the local-file branch of open-mmlab://."""
    return sorted(CheckpointLoader._schemes) + sorted(USER_SCHEMES) + [
        'open-mmlab:// (a file in MMENGINE_HOME)']


@pytest.fixture
def scheme(request, tmp_path, hub, monkeypatch):
    """(prefix, folder with ckpt.pth, load): ``load()`` loads ckpt.pth through the scheme."""
    monkeypatch.setattr(CheckpointLoader, '_schemes', dict(CheckpointLoader._schemes))
    for prefix, loader in USER_SCHEMES.items():
        CheckpointLoader.register_scheme(prefix, loader)
    folder = tmp_path / 'served'
    folder.mkdir()
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch'))
    with serve(folder) as base:
        source = _scheme_source(request.param, folder, base, monkeypatch)
        yield request.param, folder, lambda: CheckpointLoader.load_checkpoint(source)


@pytest.mark.parametrize('scheme', _schemes_to_test(), indirect=True)
def test_every_mmengine_scheme_refuses_code(scheme):
    prefix, folder, load = scheme
    marker = write_malicious(folder / 'ckpt.pth')
    with pytest.raises(UnsafeCheckpointError) as info:
        load()
    assert_refused(info.value, marker)
    with trust_checkpoints():  # the opt-in still works through the scheme
        try:
            load()
        except Exception:  # after loading: mmcls:// post-processes the payload's dict
            pass
    assert marker.exists()


@pytest.mark.parametrize('scheme', _schemes_to_test(), indirect=True)
def test_every_mmengine_scheme_loads_a_checkpoint(scheme):
    """A Runner-style checkpoint (numpy, HistoryBuffer) loads through each scheme."""
    from mmengine.logging import HistoryBuffer
    prefix, folder, load = scheme
    content = {'state_dict': {'backbone.w': torch.arange(3.)}, 'meta': {'best': np.float64(.5)},
               'message_hub': {'log_scalars': {'loss': HistoryBuffer([1., 2.], [1, 1])}}}
    torch.save(content, folder / 'ckpt.pth')
    loaded = load()
    if prefix == 'mmcls://':  # mmengine keeps the backbone's weights, renamed
        assert _same(dict(loaded['state_dict']), {'w': torch.arange(3.)})
    else:
        assert _same(loaded['state_dict'], content['state_dict'])
        assert _same(loaded['meta'], content['meta'])
        history = loaded['message_hub']['log_scalars']['loss'].data
        assert _same(history, (np.array([1., 2.]), np.array([1, 1])))


def test_a_runner_with_load_from_torchvision_refuses_code(tmp_path, hub, monkeypatch):
    """The issue's case: a config's load_from='torchvision://...'."""
    from mmengine.runner import checkpoint as mmengine_checkpoint
    marker = write_malicious(tmp_path / 'resnet.pth')
    with serve(tmp_path) as base:
        monkeypatch.setattr(mmengine_checkpoint, 'get_torchvision_models',
                            lambda: {'resnet': f'{base}/resnet.pth'})
        runner = _toy_runner(tmp_path / 'work', max_iters=2, load_from='torchvision://resnet')
        with pytest.raises(UnsafeCheckpointError) as info:
            runner.train()
    assert_refused(info.value, marker)


def test_torch_load_outside_a_dispatch_is_untouched(tmp_path):
    marker = write_malicious(tmp_path / 'evil.pth')
    torch.load(tmp_path / 'evil.pth', weights_only=False)  # the caller's explicit choice
    assert marker.exists()


# ---------------------------------------------------------------------------------------------
# Downloads from a server that fails: nothing is cached, the error names the cache file


@contextlib.contextmanager
def _lying_server(body: bytes, behaviour: dict) -> Iterator[str]:
    """Serves ``body`` for any path as ``behaviour['mode']`` says: ``ok``; ``short`` (announces
    the full length, sends half and closes); ``stall`` (sends half, then nothing until the
    client gives up); ``error`` (500)."""
    release = threading.Event()

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            mode = behaviour['mode']
            if mode == 'error':
                self.send_error(500)
                return
            self.send_response(200)
            self.send_header('Content-Length', str(len(body)))
            self.end_headers()
            self.wfile.write(body if mode == 'ok' else body[:len(body) // 2])
            self.wfile.flush()
            if mode == 'stall':
                release.wait(30)
            self.close_connection = True

    with serve(handler=Handler) as url:
        try:
            yield url
        finally:
            release.set()  # before the server closes: it waits for a stalled handler


@pytest.mark.parametrize('mode, reason, timeout', [
    ('short', r'(received \d+ bytes, but the server announced \d+|connection closed after)', {}),
    ('stall', 'no data for 0.5 s', {'timeout': 0.5}),
    ('error', 'HTTP Error 500', {}),
])
def test_a_failed_download_is_not_cached(mode, reason, timeout, tmp_path, hub):
    torch.save({'w': torch.arange(100_000.)}, tmp_path / 'w.pth')  # 400 kB: several reads
    behaviour = {'mode': mode}
    with _lying_server((tmp_path / 'w.pth').read_bytes(), behaviour) as base:
        url = f'{base}/w.pth'
        with pytest.raises(OSError, match=reason) as info:
            download_checkpoint(url, progress=False, **timeout)
        cached = [p for p in hub.rglob('*') if p.is_file()]
        assert cached == [], cached  # neither the file nor a partial one
        named = re.search(r' to (\S+) failed', str(info.value))  # the cache file
        assert named and Path(named[1]).parent.parent == hub and named[1].endswith('/w.pth'), \
            info.value
        assert 'Nothing was cached' in str(info.value)

        behaviour['mode'] = 'ok'  # the server is healthy again: the next load downloads
        assert torch.equal(read_checkpoint(url)['w'], torch.arange(100_000.))
    assert [p.name for p in hub.rglob('*') if p.is_file()] == ['w.pth']


def test_the_download_timeout_comes_from_the_environment(tmp_path, hub, monkeypatch):
    monkeypatch.setenv('DINAT_DOWNLOAD_TIMEOUT', '0.3')
    with _lying_server(b'x' * 1000, {'mode': 'stall'}) as base:
        with pytest.raises(OSError, match='no data for 0.3 s'):
            download_checkpoint(f'{base}/w.pth', progress=False)
    monkeypatch.setenv('DINAT_DOWNLOAD_TIMEOUT', 'soon')
    with pytest.raises(ValueError, match="DINAT_DOWNLOAD_TIMEOUT='soon' is not a number"):
        download_checkpoint('http://127.0.0.1:1/w.pth')


LONG_NAME = 'w' * 300 + '.pth'


@pytest.mark.parametrize('url_path, cached_name', [
    ('/models/.', 'checkpoint'),
    ('/models/..', 'checkpoint'),
    ('/models/', 'checkpoint'),
    (f'/{LONG_NAME}', 'w' * 251 + '.pth'),
    ('/dinat_tiny-20240101.pth', 'dinat_tiny-20240101.pth'),  # a date, not a hash
])
def test_url_file_names_that_are_no_valid_file_names(url_path, cached_name, tmp_path, hub):
    torch.save({'w': torch.ones(3)}, tmp_path / 'w.pth')
    with _lying_server((tmp_path / 'w.pth').read_bytes(), {'mode': 'ok'}) as base:
        path = Path(download_checkpoint(base + url_path, progress=False))
    assert path.name == cached_name and path.parent.parent == hub, path
    assert torch.equal(read_checkpoint(str(path))['w'], torch.ones(3))
    assert [p.name for p in hub.rglob('*') if p.is_file()] == [cached_name]
