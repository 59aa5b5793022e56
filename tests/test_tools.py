"""tools/train.py and tools/test.py end to end on the sample data: mmseg and mmdet configs,
resuming after a killed run, a 2-process CPU run through dist_train.sh, and the clear errors
for a missing config, a missing dataset and --amp without CUDA."""
import json
import os
import pickle
import re
import signal
import textwrap

import pytest
import torch

from helpers import (REPO_ROOT, TINY_SEG_CONFIG, assert_ok, free_port, load_tool, run_script,
                     write_config)


def _exit_message(main, argv) -> str:
    with pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code not in (0, None)
    return str(excinfo.value.code)


def _train_iters(log: str) -> list:
    """Training iterations logged by mmengine's LoggerHook ('Iter(train) [ 6/10]')."""
    return [int(i) for i in re.findall(r'Iter\(train\)\s*\[\s*(\d+)/\d+\]', log)]


# ------------------------------------------------------------------------------- clear errors
def test_train_errors_are_messages(tiny_seg_config, tiny_det_config, tmp_path):
    train = load_tool('train')
    msg = _exit_message(train.main, [str(tmp_path / 'nope.py')])
    assert 'Config file not found' in msg and 'nope.py' in msg

    # ADE20K root missing: names the missing folder and the standard layout
    msg = _exit_message(train.main, [tiny_seg_config, '--cfg-options',
                                     f'train_dataloader.dataset.data_root={tmp_path}/ade'])
    assert f'{tmp_path}/ade (data_root)' in msg
    assert f'{tmp_path}/ade/images/training/  (data_prefix.img_path)' in msg
    assert f'{tmp_path}/ade/annotations/training/  (data_prefix.seg_map_path)' in msg
    assert 'ADEChallengeData2016' in msg and 'reduce_zero_label=True' in msg

    # COCO annotation file missing (root present): names the file and the COCO layout
    (tmp_path / 'coco' / 'train2017').mkdir(parents=True)
    msg = _exit_message(train.main, [tiny_det_config, '--cfg-options',
                                     f'train_dataloader.dataset.data_root={tmp_path}/coco'])
    assert f'{tmp_path}/coco/annotations/instances_train2017.json (ann_file)' in msg
    assert 'train2017/' not in msg.split('Missing:')[1].split('This config')[0]
    assert 'instances_val2017.json' in msg and 'cocodataset.org' in msg

    # a validation set missing is caught before training starts, too
    msg = _exit_message(train.main, [tiny_seg_config, '--cfg-options',
                                     f'val_dataloader.dataset.data_root={tmp_path}/val'])
    assert 'val_dataloader' in msg

    if not torch.cuda.is_available():  # the CPU machines these tests run on
        msg = _exit_message(train.main, [tiny_seg_config, '--amp'])
        assert '--amp needs a CUDA' in msg and 'without --amp' in msg
        msg = _exit_message(train.main, [tiny_seg_config, '--launcher', 'slurm'])
        assert 'torchrun and --launcher pytorch' in msg
        msg = _exit_message(train.main, [tiny_seg_config, '--launcher', 'pytorch'])
        assert 'RANK' in msg and 'tools/dist_train.sh' in msg

    msg = _exit_message(train.main, [tiny_seg_config, '--resume', str(tmp_path / 'x.pth')])
    assert 'checkpoint file not found' in msg

    test = load_tool('test')
    msg = _exit_message(test.main, [tiny_seg_config, str(tmp_path / 'missing.pth')])
    assert 'Checkpoint file not found' in msg
    (tmp_path / 'some.pth').touch()
    msg = _exit_message(test.main, [tiny_det_config, str(tmp_path / 'some.pth'), '--out',
                                    str(tmp_path / 'results.json')])
    assert '.pkl' in msg and 'results.json' in msg


REFERENCE_CHECKPOINT = REPO_ROOT / 'tests' / 'data' / 'reference_dinat_small_random.pt'
# tool, arguments ({config}: the tiny seg config, {no_model}: a config without `model`,
# {dir}: an existing directory, {ckpt}: a valid checkpoint, {tmp}), the one-line message
BAD_ARGUMENTS = [
    ('convert_checkpoint', ['{ckpt}', '{dir}'], "DST: '{dir}' is a directory; give a file name"),
    ('convert_checkpoint', ['{dir}', '{tmp}/out.pth'],
     "SRC: '{dir}' is a directory without a checkpoint"),
    ('convert_checkpoint', ['{ckpt}', '{tmp}/out.pth', '--task', '--config', '{dir}'],
     "--config: no such file: '{dir}'"),
    ('train', ['{no_model}'], "'{no_model}' defines no `model`"),
    ('test', ['{no_model}', '{ckpt}'], "'{no_model}' defines no `model`"),
    ('train', ['{config}', '--cfg-options', 'train_dataloader=5', 'train_dataloader.batch_size=2'],
     "--cfg-options train_dataloader.batch_size=2 does not fit the config '{config}': TypeError"),
    ('test', ['{config}', '{ckpt}', '--cfg-options', 'model.backbone=small',
              'model.backbone.depths=[2]'],
     "--cfg-options model.backbone.depths=[2] does not fit the config '{config}': TypeError"),
]


@pytest.mark.parametrize('tool, template, expected', BAD_ARGUMENTS,
                         ids=[f'{t} {" ".join(a)}' for t, a, _ in BAD_ARGUMENTS])
def test_bad_arguments_fail_at_start_in_one_line(tool, template, expected, tiny_seg_config,
                                                 tmp_path, capsys):
    """Checked before any work: the message is the first thing the tool says, and nothing is
    written (e.g. no converted checkpoint before a directory as DST is noticed)."""
    (tmp_path / 'dir').mkdir()
    (tmp_path / 'no_model.py').write_text("default_scope = 'mmseg'\ntrain_cfg = dict()\n")
    fields = dict(config=tiny_seg_config, no_model=tmp_path / 'no_model.py', dir=tmp_path / 'dir',
                  ckpt=REFERENCE_CHECKPOINT, tmp=tmp_path)
    before = sorted(tmp_path.rglob('*'))
    with pytest.raises(SystemExit) as info:
        load_tool(tool).main([a.format(**fields) for a in template])
    code = info.value.code
    message = (capsys.readouterr().err.strip().splitlines() or [''])[-1] if code == 2 else str(code)
    assert expected.format(**fields) in message, message
    assert '\n' not in message and 'Traceback' not in message
    assert sorted(tmp_path.rglob('*')) == before


def test_train_error_has_no_traceback(run_tool, tmp_path):
    result = run_tool('train.py', [str(tmp_path / 'missing_config.py')], timeout=120)
    assert result.returncode == 1
    assert 'Config file not found' in result.stderr
    assert 'Traceback' not in result.stderr


def test_sample_data_cli(run_tool, tmp_path, capsys):
    with pytest.raises(SystemExit) as excinfo:
        load_tool('make_sample_data').main(['--help'])
    assert excinfo.value.code == 0
    usage = capsys.readouterr().out
    assert '--out' in usage and 'data/sample' in usage
    assert 'reduce_zero_label' in usage and 'instances_' in usage and 'kite' in usage
    assert 'panoptic_' in usage and 'grass-merged' in usage
    result = run_tool('make_sample_data.py', ['--out', str(tmp_path / 's')], timeout=120)
    assert_ok(result)
    assert (tmp_path / 's' / 'coco' / 'annotations' / 'instances_val2017.json').is_file()
    assert (tmp_path / 's' / 'coco' / 'annotations' / 'panoptic_val2017.json').is_file()
    assert len(list((tmp_path / 's' / 'ade20k' / 'images' / 'training').glob('*.jpg'))) == 32


# ---------------------------------------------------------------------- mmseg end to end
KILL_HOOK = '''\
import os
import signal

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class KillAtIter(Hook):
    """SIGKILLs the training process after iteration `at` (an interruption, no cleanup)."""
    priority = 'LOWEST'  # after the CheckpointHook of the same iteration

    def __init__(self, at):
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == self.at:
            os.kill(os.getpid(), signal.SIGKILL)
'''


@pytest.fixture(scope='module')
def killed_seg_run(tiny_seg_config, tmp_path_factory):
    """A tiny mmseg run through tools/train.py, killed after iteration 7 of 10."""
    base = tmp_path_factory.mktemp('killed')
    (base / 'kill_hook.py').write_text(KILL_HOOK)
    cfg = base / 'killed.py'
    cfg.write_text(textwrap.dedent(f'''\
        _base_ = [{tiny_seg_config!r}]
        custom_imports = dict(imports=['kill_hook'], allow_failed_imports=False)
        custom_hooks = [dict(type='KillAtIter', at=7)]
        '''))
    work_dir = base / 'work'
    result = run_script('train.py', [str(cfg), '--work-dir', str(work_dir)],
                        env=dict(PYTHONPATH=os.pathsep.join([str(base), str(REPO_ROOT)])))
    return result, work_dir


@pytest.mark.slow
def test_train_resume_auto_after_kill(killed_seg_run, tiny_seg_config, run_tool):
    killed, work_dir = killed_seg_run
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert _train_iters(killed.stdout + killed.stderr) == list(range(1, 8))
    assert (work_dir / 'iter_5.pth').is_file() and not (work_dir / 'iter_10.pth').exists()
    assert (work_dir / 'last_checkpoint').read_text().strip().endswith('iter_5.pth')

    result = run_tool('train.py', [tiny_seg_config, '--work-dir', str(work_dir), '--resume'])
    assert_ok(result)
    log = result.stdout + result.stderr
    assert 'resumed' in log.lower()
    assert _train_iters(log) == [6, 7, 8, 9, 10]  # continues from the checkpoint of iter 5
    assert re.search(r'mIoU:\s*[\d.]+', log)  # validation at iteration 10
    ckpt = torch.load(work_dir / 'iter_10.pth', map_location='cpu', weights_only=False)
    assert ckpt['meta']['iter'] == 10
    # the report at the end says where things went
    assert f'checkpoints: {work_dir}' in result.stdout
    assert f'latest:      {work_dir / "iter_10.pth"}' in result.stdout
    assert re.search(rf'logs:\s+{re.escape(str(work_dir))}/\d{{8}}_\d{{6}}', result.stdout)


@pytest.mark.slow
def test_train_resume_from_path(killed_seg_run, tiny_seg_config, run_tool, tmp_path):
    _, killed_dir = killed_seg_run
    work_dir = tmp_path / 'from_path'
    result = run_tool('train.py', [tiny_seg_config, '--work-dir', str(work_dir),
                                   '--resume', str(killed_dir / 'iter_5.pth')])
    assert_ok(result)
    assert _train_iters(result.stdout + result.stderr) == [6, 7, 8, 9, 10]
    assert (work_dir / 'iter_10.pth').is_file()


@pytest.mark.slow  # the training run of its fixture
def test_test_mmseg(killed_seg_run, tiny_seg_config, run_tool, tmp_path):
    _, killed_dir = killed_seg_run
    out, show = tmp_path / 'preds', tmp_path / 'show'
    result = run_tool('test.py', [tiny_seg_config, str(killed_dir / 'iter_5.pth'),
                                  '--work-dir', str(tmp_path / 'test'), '--out', str(out),
                                  '--show-dir', str(show)])
    assert_ok(result)
    metrics_files = list((tmp_path / 'test').glob('*/*.json'))
    assert len(metrics_files) == 1
    metrics = json.loads(metrics_files[0].read_text())
    assert 0.0 <= metrics['mIoU'] <= 100.0 and 'aAcc' in metrics
    assert len(list(out.glob('*.png'))) == 8  # predicted label maps of the 8 val images
    assert len(list((show / 'vis_data' / 'vis_image').glob('*.png'))) == 8  # painted
    assert 'Testing finished' in result.stdout and str(out) in result.stdout


@pytest.mark.slow
def test_dist_train_two_cpu_processes(sample_data_root, tmp_path, run_tool):
    # SyncBN in the config: the CPU path of train.py must turn it into BN.
    config = write_config(tmp_path / 'tiny_syncbn.py', TINY_SEG_CONFIG,
                          data_root=sample_data_root['ade20k'], norm='SyncBN')
    work_dir = tmp_path / 'dist'
    result = run_tool('dist_train.sh', [config, '2', '--work-dir', str(work_dir),
                                        '--cfg-options', 'train_cfg.max_iters=4',
                                        'train_cfg.val_interval=4',
                                        'default_hooks.checkpoint.interval=4'],
                      env=dict(PORT=str(free_port())))
    assert_ok(result)
    log = result.stdout + result.stderr
    assert 'Distributed training: True' in log
    assert re.search(r'GPU number: 2\b', log)  # mmengine logs world_size under that name
    assert 'SyncBN layers replaced by BN' in log
    assert _train_iters(log) == [1, 2, 3, 4]  # logged once, by rank 0
    assert "device_ids=None" in log and "type='MMDistributedDataParallel'" in log
    assert re.search(r'Iter\(val\)\s*\[4/4\]', log)  # 8 val images split over 2 ranks
    assert re.search(r'mIoU:\s*[\d.]+', log)  # metric gathered from both ranks
    ckpt = torch.load(work_dir / 'iter_4.pth', map_location='cpu', weights_only=False)
    assert not any(k.startswith('module.') for k in ckpt['state_dict'])


# ---------------------------------------------------------------------- mmdet end to end
@pytest.fixture(scope='module')
def det_run(tiny_det_config, tmp_path_factory):
    """tools/train.py on the tiny Mask R-CNN config: 4 iterations, then COCO validation."""
    work_dir = tmp_path_factory.mktemp('det') / 'work'
    return run_script('train.py', [tiny_det_config, '--work-dir', str(work_dir)]), work_dir


@pytest.mark.slow
def test_train_mmdet(det_run):
    result, work_dir = det_run
    assert_ok(result)
    log = result.stdout + result.stderr
    assert _train_iters(log) == [1, 2, 3, 4]
    assert re.search(r'coco/bbox_mAP: [\d.-]+', log)
    assert re.search(r'coco/segm_mAP: [\d.-]+', log)
    ckpt = torch.load(work_dir / 'iter_4.pth', map_location='cpu', weights_only=False)
    assert ckpt['meta']['iter'] == 4
    assert ckpt['state_dict']['roi_head.mask_head.conv_logits.weight'].shape[0] == 3
    assert f'latest:      {work_dir / "iter_4.pth"}' in result.stdout


@pytest.mark.slow  # the training run of its fixture
def test_test_mmdet(det_run, tiny_det_config, tmp_path, run_tool):
    _, train_dir = det_run
    out = tmp_path / 'results.pkl'
    result = run_tool('test.py', [tiny_det_config, str(train_dir / 'iter_4.pth'),
                                  '--work-dir', str(tmp_path / 'test'), '--out', str(out)])
    assert_ok(result)
    assert re.search(r'coco/segm_mAP: [\d.-]+', result.stdout + result.stderr)
    with open(out, 'rb') as f:
        results = pickle.load(f)
    assert len(results) == 8
    assert {'bboxes', 'scores', 'labels', 'masks'} <= set(results[0]['pred_instances'])
    assert f'predictions: {out}' in result.stdout
