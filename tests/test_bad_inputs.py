"""Bad inputs -> clear errors, one table per public boundary: the backbone (construction and
forward), the ``na2d`` operator, checkpoint loading and the command-line tools. Each row is
(what is built or run, with which bad input) -> (error type or exit, message fragment).

The tools must refuse at their start: every tool row also passes an argument that would fail
differently (a missing checkpoint, an unregistered model type) if the tool got as far as
building or loading a model, so the expected message shows the check came first. The tool
rows call each tool's ``main`` in this process (a subprocess each took 8-22 s here, mostly
imports); one subprocess run checks what a user sees: the exit status and a one-line error
without a traceback."""
import functools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from dinat_backbone.apis.features import FeatureExtractor, build_backbone, read_image
from dinat_backbone.models import DiNAT, NeighborhoodAttention2D
from dinat_backbone.ops import na2d
from dinat_backbone.weights import load_pretrained

from helpers import REPO_ROOT, load_tool, run_script
from tiny_checkpoints import shape_only_state

TOOLS_DIR = REPO_ROOT / 'tools'
export_onnx = load_tool('export_onnx')

TINY_ARCH = dict(embed_dims=16, depths=[1, 1, 1, 1], num_heads=[1, 2, 2, 4], mlp_ratio=2.)
TINY = dict(arch=TINY_ARCH, kernel_size=3, dilations=[[1]] * 4, drop_path_rate=0.)


def row(id_: str, *values) -> pytest.param:
    return pytest.param(*values, id=id_)


def tiny_dinat(**kwargs) -> DiNAT:
    torch.manual_seed(0)
    model = DiNAT(**{**TINY, **kwargs})
    model.init_weights()
    return model.eval()


# ------------------------------------------------------------------------------------ backbone
def arch(**changes) -> dict:
    return dict(arch=dict(TINY_ARCH, **changes))


BACKBONE_ARGUMENTS = [
    # a string ratio made int(16 * '2') a 16-digit hidden size: petabytes
    row('mlp_ratio-str', arch(mlp_ratio='2'), TypeError,
        "mlp_ratio must be a number > 0, got mlp_ratio='2' (str)"),
    row('mlp_ratio-0', arch(mlp_ratio=0), ValueError, 'mlp_ratio must be a number > 0'),
    row('num_heads-0', arch(num_heads=[0, 2, 2, 4]), ValueError,
        'num_heads[0] must be an int >= 1, got num_heads[0]=0'),
    row('num_heads-per-level', arch(num_heads=[1, 2, 2]), ValueError,
        'depths and num_heads need one entry per level'),
    row('embed_dims-str', arch(embed_dims='16'), TypeError,
        "embed_dims must be an int >= 1, got embed_dims='16' (str)"),
    row('depths-int', arch(depths=4), TypeError, 'depths must be a list of ints'),
    row('layer_scale-str', arch(layer_scale='1e-5'), TypeError, 'layer_scale must be a number'),
    row('in_channels-str', dict(in_channels='3'), TypeError,
        "in_channels must be an int >= 1, got in_channels='3'"),
    row('in_channels-0', dict(in_channels=0), ValueError, 'in_channels must be an int >= 1'),
    row('kernel_size-even', dict(kernel_size=4), ValueError, 'odd kernel size'),
    row('qk_scale-0', dict(qk_scale=0), ValueError, 'qk_scale must be a number > 0'),
    row('qk_scale-str', dict(qk_scale='0.1'), TypeError, 'qk_scale must be a number > 0'),
    row('drop_path_rate-above-1', dict(drop_path_rate=1.5), ValueError,
        'drop_path_rate must be a number in [0, 1), got drop_path_rate=1.5'),
    row('drop_rate-negative', dict(drop_rate=-0.1), ValueError, 'drop_rate must be a number in'),
    row('attn_drop_rate-bool', dict(attn_drop_rate=True), TypeError,
        'attn_drop_rate must be a number'),
    row('dilations-float', dict(dilations=[[1.0]] * 4), ValueError,
        'dilations must be integers >= 1'),
    row('out_indices-descending', dict(out_indices=(3, 0)), ValueError,
        'out_indices must be strictly increasing (outputs come in level order), got (3, 0); '
        'use (0, 3)'),
    row('out_indices-duplicate', dict(out_indices=(1, 1)), ValueError, 'strictly increasing'),
    row('out_indices-out-of-range', dict(out_indices=(4, )), ValueError,
        'non-empty subset of 0..3'),
    row('out_indices-empty', dict(out_indices=()), ValueError, 'non-empty subset'),
    row('out_indices-int', dict(out_indices=3), TypeError, 'e.g. (3, )'),
    row('frozen_stages-str', dict(frozen_stages='1'), TypeError, 'frozen_stages must be an int'),
    row('frozen_stages-too-large', dict(frozen_stages=5), ValueError, 'frozen_stages must be in'),
]


@pytest.mark.parametrize('kwargs,error,fragment', BACKBONE_ARGUMENTS)
def test_backbone_construction(kwargs, error, fragment):
    with pytest.raises(error, match=re.escape(fragment)):
        DiNAT(**{**TINY, **kwargs})


BACKBONE_INPUTS = [
    row('uint8-image', torch.zeros(1, 3, 32, 32, dtype=torch.uint8), TypeError,
        'DiNAT expects a normalised floating-point image, got dtype torch.uint8'),
    row('float16-into-float32', torch.zeros(1, 3, 32, 32, dtype=torch.float16), TypeError,
        'DiNAT has torch.float32 weights but got a torch.float16 input'),
    row('float64-into-float32', torch.zeros(1, 3, 32, 32, dtype=torch.float64), TypeError,
        'x.to(torch.float32)'),
    row('3-d', torch.zeros(3, 32, 32), ValueError, 'DiNAT expects images of shape [B, C, H, W]'),
    row('4-channels', torch.zeros(1, 4, 32, 32), ValueError, 'built for 3 input channels'),
]


@pytest.mark.parametrize('x,error,fragment', BACKBONE_INPUTS)
def test_backbone_forward(x, error, fragment):
    with pytest.raises(error, match=re.escape(fragment)):
        tiny_dinat()(x)


def test_numpy_numbers_build_the_same_model_as_python_numbers():
    # Dilations, out_indices and ratios read from arrays or JSON-like configs are numpy scalars.
    x = torch.randn(1, 3, 40, 48)
    expected = tiny_dinat(dilations=[[1], [2], [1], [1]], out_indices=(1, 3))(x)
    got = tiny_dinat(arch=dict(TINY_ARCH, embed_dims=np.int64(16), mlp_ratio=np.float64(2.)),
                     dilations=np.array([[1], [2], [1], [1]]), out_indices=np.array([1, 3]))
    assert got.out_indices == (1, 3) and got.dilations == [[1], [2], [1], [1]]
    for a, b in zip(got(x), expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_a_half_precision_input_is_accepted_under_autocast():
    model = tiny_dinat()
    x = torch.randn(1, 3, 32, 32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        outputs = model(x.bfloat16())
    assert [o.shape[1] for o in outputs] == model.out_channels


def test_qk_scale_is_used_as_given():
    # `qk_scale or default` replaced a given 0 by head_dims ** -0.5.
    assert NeighborhoodAttention2D(16, 2, kernel_size=3, qk_scale=0.).scale == 0.
    assert NeighborhoodAttention2D(16, 2, kernel_size=3).scale == 8 ** -0.5


def test_out_indices_order_is_the_same_everywhere(tmp_path):
    """Outputs, out_channels, the strides the features tools save and the ONNX output names
    all follow the (increasing) out_indices."""
    config = tmp_path / 'backbone.py'
    config.write_text(f"model = dict(backbone=dict(type='DiNAT', out_indices=(1, 3), "
                      f"arch={TINY_ARCH!r}, kernel_size=3, dilations=[[1]] * 4))\n")
    backbone, _ = build_backbone(str(config))
    height, width = 64, 96
    outputs = backbone(torch.randn(1, 3, height, width))
    assert [o.shape[1] for o in outputs] == backbone.out_channels == [32, 128]
    strides = [height // o.shape[2] for o in outputs]
    assert strides == [width // o.shape[3] for o in outputs] == [8, 32]
    assert FeatureExtractor(backbone).strides == strides
    module, names, metadata = export_onnx.build_model(str(config))
    assert names == ['level1', 'level3'] and metadata['strides'] == json.dumps(strides)


# ------------------------------------------------------------------------------------ operator
Q = torch.zeros(1, 8, 7, 2, 4)

OPERATOR_ARGUMENTS = [
    row('kernel_size-str', dict(kernel_size='3'), TypeError,
        "kernel_size must be an int or a pair of ints, got kernel_size='3'"),
    row('kernel_size-triple', dict(kernel_size=(3, 3, 3)), TypeError, 'pair of ints'),
    row('kernel_size-even', dict(kernel_size=4), ValueError, 'odd kernel size'),
    row('dilation-float', dict(kernel_size=3, dilation=2.0), TypeError,
        'dilation must be an int or a pair of ints, got dilation=2.0'),
    row('dilation-bool', dict(kernel_size=3, dilation=True), TypeError, 'pair of ints'),
    row('dilation-0', dict(kernel_size=3, dilation=0), ValueError, 'Dilation must be >= 1'),
    row('kernel-times-dilation-too-large', dict(kernel_size=3, dilation=3), ValueError,
        'cannot be larger than the input size (pad the input first)'),
    row('rpb-shape', dict(kernel_size=3, rpb=torch.zeros(2, 3, 3)), ValueError,
        'rpb must have shape [heads, 2*kernel_h-1, 2*kernel_w-1] = [2, 5, 5]'),
    row('value-dtype', dict(kernel_size=3, value=Q.double()), TypeError,
        'query, key and value must have the same dtype'),
    row('4-d', dict(kernel_size=3, query=Q[0], key=Q[0], value=Q[0]), ValueError,
        'na2d expects query/key/value of shape [batch, height, width, heads, head_dim]'),
    # issue 19: inputs that failed deep inside (ZeroDivisionError, raw kernel errors) or whose
    # attn_drop was silently ignored
    *(row(f'{name}-0', dict(kernel_size=3, **dict.fromkeys(('query', 'key', 'value'), q)),
          ValueError, f'na2d needs at least one head and a head_dim >= 1, got query.shape='
          f'{tuple(q.shape)}')
      for name, q in (('head_dim', Q[..., :0]), ('heads', Q[..., :0, :]))),
    *(row(f'dtype-{dtype}'.replace('torch.', ''),
          dict(kernel_size=3, **dict.fromkeys(('query', 'key', 'value'), Q.to(dtype))),
          TypeError, f'na2d takes floating-point query/key/value (float16, bfloat16, float32, '
          f'float64), got {dtype}')
      for dtype in (torch.int64, torch.bool, torch.complex64)),
    row('meta-tensors', dict(kernel_size=3,
                             **dict.fromkeys(('query', 'key', 'value'), Q.to('meta'))),
        ValueError, 'na2d cannot compute on meta tensors (they hold no data)'),
    row('rpb-int', dict(kernel_size=3, rpb=torch.zeros(2, 5, 5, dtype=torch.long)), TypeError,
        'rpb must be a floating-point tensor, got torch.int64'),
    row('query-ndarray', dict(kernel_size=3, query=Q.numpy()), TypeError,
        'query must be a torch.Tensor, got ndarray'),
    *(row(f'attn_drop-{value}', dict(kernel_size=3, attn_drop=value), ValueError,
          f'attn_drop must be a number in [0, 1), got attn_drop={value!r}')
      for value in (-0.1, 1.0, 1.5, float('nan'))),
    *(row(f'attn_drop-{type(value).__name__}', dict(kernel_size=3, attn_drop=value), TypeError,
          f'attn_drop must be a number in [0, 1), got attn_drop={value!r}')
      for value in ('0.1', True, None)),
]


@pytest.mark.parametrize('kwargs,error,fragment', OPERATOR_ARGUMENTS)
def test_operator(kwargs, error, fragment):
    with pytest.raises(error, match=re.escape(fragment)):
        na2d(**{'query': Q, 'key': Q, 'value': Q, **kwargs})


def test_operator_takes_numpy_integers_like_python_ones():
    q, k, v = torch.randn(3, 1, 9, 8, 2, 4).unbind(0)
    expected = na2d(q, k, v, 3, (2, 1))
    torch.testing.assert_close(na2d(q, k, v, np.int64(3), (np.int64(2), np.int32(1))), expected,
                               rtol=0, atol=0)


# --------------------------------------------------------------------------------- checkpoints
def _small_checkpoint(tmp_path) -> str:
    with torch.device('meta'):  # shapes only: nothing is computed or allocated
        state = shape_only_state(DiNAT(arch='small'))
    torch.save(state, tmp_path / 'small.pth')
    return str(tmp_path / 'small.pth')


def _missing(tmp_path) -> str:
    return str(tmp_path / 'missing.pth')


def _not_dinat(tmp_path) -> str:
    torch.save({'conv.weight': torch.zeros(2, 2)}, tmp_path / 'resnet.pth')
    return str(tmp_path / 'resnet.pth')


CHECKPOINTS = [
    row('wrong-variant', _small_checkpoint, ValueError,
        'checkpoint looks like DiNAT-Small (embed_dims=96'),
    row('missing-file', _missing, FileNotFoundError, 'missing.pth'),
    row('not-dinat', _not_dinat, ValueError, 'Not a DiNAT checkpoint'),
]


@pytest.mark.parametrize('make,error,fragment', CHECKPOINTS)
def test_checkpoint(make, error, fragment, tmp_path):
    with torch.device('meta'):
        model = DiNAT(arch='tiny')
    with pytest.raises(error, match=re.escape(fragment)):
        load_pretrained(model, make(tmp_path))


# Hostile files (tests/hostile_checkpoints.py), loaded without the opt-in in one subprocess: a
# forged object array crashes the interpreter (SIGSEGV) when it is printed or freed, so a signal
# exit fails every row still waiting. Each row: the file's error type and message fragment.
NUMPY_OBJECTS = "holds object values (Python objects or pointers)"
HOSTILE_FILES = [
    row('object-dtype-flags-cleared', 'UnsafeCheckpointError', "numpy dtype 'O8' " + NUMPY_OBJECTS),
    row('object-dtype', 'UnsafeCheckpointError',
        "numpy dtype 'O8' is marked as holding Python objects (flags 63)"),
    row('float64-with-object-flags', 'UnsafeCheckpointError',
        "numpy dtype 'f8' is marked as holding Python objects (flags 63)"),
    row('structured-object-field', 'UnsafeCheckpointError', NUMPY_OBJECTS),
    row('sub-array-of-objects', 'UnsafeCheckpointError', NUMPY_OBJECTS),
    row('dtype-containing-itself', 'UnsafeCheckpointError', 'a numpy dtype contains itself'),
    row('object-scalar', 'UnsafeCheckpointError', NUMPY_OBJECTS),
    row('object-dtype-class', 'UnsafeCheckpointError', 'it needs numpy.dtypes.ObjectDType'),
    row('field-outside-the-item', 'UnsafeCheckpointError',
        'NumPy dtype descriptor requires 1048584 bytes, cannot override to smaller itemsize'),
    row('array-larger-than-its-bytes', 'UnsafeCheckpointError',
        'a numpy float64 array of shape (1073741824,) needs 8589934592 bytes, the file gives 16'),
    row('unsupported-opcode', 'UnsafeCheckpointError', ': Unsupported operand 149. It is not'),
    row('storage-larger-than-its-record', 'CheckpointReadError',
        'record size (8 bytes) does not match expected size (17179869184 bytes'),
    row('storage-larger-than-the-file-legacy', 'CheckpointReadError',
        "Cannot read {path}: its tensors declare 17179869184 bytes of data, more than the file's"),
    row('truncated', 'CheckpointReadError', 'Cannot read {path} (300 bytes): PytorchStreamReader'),
    row('damaged-safetensors', 'CheckpointReadError',
        'Cannot read {path}: it is not a valid safetensors file'),
]


@pytest.fixture(scope='module')
def hostile_loads(tmp_path_factory) -> dict:
    """Row id -> (path, outcome), or the subprocess's end for rows it did not reach."""
    from hostile_checkpoints import HOSTILE
    folder = tmp_path_factory.mktemp('hostile')
    paths = {name: str(make(folder / f'{name}.pth')) for name, make in HOSTILE.items()}
    result = subprocess.run([sys.executable, str(REPO_ROOT / 'tests' / 'hostile_checkpoints.py'),
                             *paths.values()], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    outcomes = {line['path']: line for line in map(json.loads, result.stdout.splitlines())}
    died = f'exit status {result.returncode}: {result.stderr[-2000:]}'
    return {name: (path, outcomes.get(path, died)) for name, path in paths.items()}


@pytest.mark.parametrize('error,fragment', HOSTILE_FILES)
def test_hostile_file(error, fragment, hostile_loads, request):
    path, outcome = hostile_loads[request.node.callspec.id]
    assert isinstance(outcome, dict), f'the loading process died ({outcome})'
    assert (outcome['type'], fragment.format(path=path) in outcome['message']) == (error, True), \
        outcome
    assert '\n' not in outcome['message']


def test_every_hostile_file_has_a_row():
    from hostile_checkpoints import HOSTILE
    assert sorted(HOSTILE) == sorted(case.id for case in HOSTILE_FILES)


# An unreadable checkpoint ends each loading tool with one line (not a traceback) naming it.
UNREADABLE_CHECKPOINT_TOOLS = [
    row('convert', 'convert_checkpoint', ['{ckpt}', '{tmp}/out.pth']),
    row('convert-task', 'convert_checkpoint', ['{ckpt}', '{tmp}/out.pth', '--task']),
    row('classify', 'classify', ['{image}', '--checkpoint', '{ckpt}']),
    row('extract-features', 'extract_features',
        ['mini', '--checkpoint', '{ckpt}', '--input', '{image}', '--out', '{tmp}/f']),
]


@pytest.mark.parametrize('damage', ['damaged-safetensors', 'truncated'])
@pytest.mark.parametrize('tool,args', UNREADABLE_CHECKPOINT_TOOLS)
def test_tool_names_an_unreadable_checkpoint(tool, args, damage, tmp_path, capsys):
    import cv2
    from hostile_checkpoints import HOSTILE
    paths = dict(tmp=tmp_path, image=tmp_path / 'a.png', ckpt=HOSTILE[damage](tmp_path / 'c.pth'))
    cv2.imwrite(str(paths['image']), np.zeros((32, 32, 3), np.uint8))
    code, err = run_main(tool, [a.format(**paths) for a in args], capsys)
    assert code == 1 and 'Traceback' not in err, err
    assert f'error: Cannot read {paths["ckpt"]}' in err, err


# --------------------------------------------------------------------------------------- tools
# Placeholders: {file} a regular file, {empty_jpg} a 0-byte .jpg, {missing} an absent checkpoint,
# {ckpt} an empty file posing as one, {config} an mmseg config whose model type is not
# registered (building it would fail with a KeyError traceback). Exit status 2 is argparse's
# parser.error, 1 a tool's own SystemExit(message) or error return.
TOOLS = [
    row('train-work-dir-under-a-file', 'train', ['{config}', '--work-dir', '{file}/run'], 1,
        "work_dir: '{file}' is a file, not a directory, in the path of '{file}/run'"),
    row('test-work-dir-under-a-file', 'test', ['{config}', '{ckpt}', '--work-dir', '{file}/x'],
        1, "work_dir: '{file}' is a file, not a directory"),
    row('extract-empty-jpg', 'extract_features',
        ['mini', '--checkpoint', '{missing}', '--input', '{empty_jpg}', '--out', '{tmp}/f'], 1,
        'error: Empty image files (0 bytes): {empty_jpg}'),
    row('extract-out-under-a-file', 'extract_features',
        ['mini', '--checkpoint', '{missing}', '--input', '{file}', '--out', '{file}/f'], 2,
        "--out: '{file}' is a file, not a directory"),
    row('extract-out-indices-descending', 'extract_features',
        ['mini', '--checkpoint', '{missing}', '--input', '{file}', '--out', '{tmp}/f',
         '--out-indices', '3', '0'], 2, 'out_indices must be strictly increasing'),
    row('classify-missing-image', 'classify', ['{tmp}/cat.jpg', '--checkpoint', '{missing}'],
        2, "error: image file not found: '{tmp}/cat.jpg'"),
    row('classify-empty-image', 'classify', ['{empty_jpg}', '--checkpoint', '{missing}'], 2,
        "error: cannot read image '{empty_jpg}'"),
    row('export-out-under-a-file', 'export_onnx',
        ['mini', '--checkpoint', '{missing}', '--out', '{file}/mini.onnx'], 2,
        "--out: '{file}' is a file, not a directory, in the path of '{file}/mini.onnx'"),
    row('export-out-is-a-directory', 'export_onnx',
        ['mini', '--checkpoint', '{missing}', '--out', '{tmp}'], 2,
        "--out: '{tmp}' is a directory; give a file name"),
    row('export-out-indices-descending', 'export_onnx',
        ['mini', '--checkpoint', '{missing}', '--out-indices', '2', '1'], 2, 'use (1, 2)'),
    row('convert-dst-is-a-directory', 'convert_checkpoint', ['{missing}', '{tmp}'], 2,
        "DST: '{tmp}' is a directory; give a file name"),
    row('convert-src-directory-without-checkpoint', 'convert_checkpoint',
        ['{tmp}', '{tmp}/out.pth'], 2, "SRC: '{tmp}' is a directory without a checkpoint"),
    row('convert-config-missing', 'convert_checkpoint',
        ['{missing}', '{tmp}/out.pth', '--task', '--config', '{tmp}/nope.py'], 2,
        "--config: no such file: '{tmp}/nope.py'"),
    row('train-config-without-model', 'train', ['{no_model}'], 1,
        "'{no_model}' defines no `model`"),
    row('test-config-without-model', 'test', ['{no_model}', '{ckpt}'], 1,
        "'{no_model}' defines no `model`"),
    row('train-cfg-options-into-a-non-dict', 'train',
        ['{config}', '--cfg-options', 'model=1', 'model.type=x'], 1,
        "--cfg-options model.type='x' does not fit the config '{config}': TypeError"),
    row('test-cfg-options-into-a-non-dict', 'test',
        ['{config}', '{ckpt}', '--cfg-options', 'model=1', 'model.type=x'], 1,
        "--cfg-options model.type='x' does not fit the config '{config}': TypeError"),
]


@pytest.fixture
def tool_paths(tmp_path) -> dict:
    paths = dict(tmp=tmp_path, file=tmp_path / 'a_file', empty_jpg=tmp_path / 'empty.jpg',
                 missing=tmp_path / 'missing.pth', ckpt=tmp_path / 'ckpt.pth',
                 config=tmp_path / 'config.py', no_model=tmp_path / 'no_model.py')
    paths['file'].write_text('not a directory')
    paths['empty_jpg'].write_bytes(b'')
    paths['ckpt'].write_bytes(b'')
    paths['config'].write_text("default_scope = 'mmseg'\nmodel = dict(type='NotRegistered')\n")
    paths['no_model'].write_text("default_scope = 'mmseg'\ntrain_cfg = dict()\n")
    return {k: str(v) for k, v in paths.items()}


# One import per tool for the parametrised cases below.
_tool = functools.lru_cache(maxsize=None)(load_tool)


def run_main(tool: str, argv: list, capsys) -> tuple:
    """``(exit status, stderr)`` of ``tools/<tool>.py argv`` as the interpreter would end it:
    any exception but SystemExit escapes (and fails the test), as it would print a traceback."""
    try:
        code = _tool(tool).main(argv)
    except SystemExit as exit:
        code = exit.code
    err = capsys.readouterr().err
    if isinstance(code, str):  # SystemExit(message): printed to stderr, exit status 1
        return 1, err + code
    return code, err


@pytest.mark.parametrize('tool,args,code,fragment', TOOLS)
def test_tool_refuses_at_start(tool, args, code, fragment, tool_paths, capsys):
    got, err = run_main(tool, [a.format(**tool_paths) for a in args], capsys)
    assert (got, fragment.format(**tool_paths) in err) == (code, True), err


def test_reading_an_empty_image_file_names_it(tool_paths):
    # OpenCV asserts on an empty buffer (cv2.error) instead of returning None.
    path = tool_paths['empty_jpg']
    with pytest.raises(ValueError, match=re.escape(f"Cannot read image '{path}'")):
        read_image(path)


def test_a_tool_error_is_one_line_without_traceback(tool_paths):
    result = run_script('classify.py', [f'{tool_paths["tmp"]}/cat.jpg', '--checkpoint',
                                        tool_paths['missing']], timeout=120)
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"classify.py: error: image file not found: '{tool_paths['tmp']}/cat.jpg'")
