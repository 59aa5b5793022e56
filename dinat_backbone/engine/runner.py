"""Runner set-up shared by ``tools/train.py`` and ``tools/test.py``: their common flags, the
config loading (codebase registration, work_dir), the dataset checks before the Runner is
built, ``--launcher pytorch`` without CUDA and the checkpoint loading policy.

The tools import the installed package (``pip install -e .``); run from a clone without it,
``import dinat_backbone`` fails with ``ModuleNotFoundError`` and the fix is that install.
"""
import argparse
import contextlib
import datetime
import importlib
import logging
import os
import os.path as osp
from typing import Any, Dict, Iterator, List, Optional, Sequence

from mmengine.config import Config, ConfigDict, DictAction

from .cli import check_writable_dir

__all__ = [
    'DATASET_LAYOUTS', 'add_common_args', 'build_runner', 'check_dataset_paths', 'import_codebase',
    'load_config', 'loading_checkpoints', 'parse_with_local_rank', 'set_work_dir',
    'setup_distributed', 'sync_bn_to_bn'
]

SCOPE_UTILS = {'mmdet': 'mmdet.utils', 'mmseg': 'mmseg.utils'}

# ADE20K panoptic and instance annotations in COCO format, made beside the semantic ones.
_ADE20K_COCO_FORMAT = """\
ADE20K panoptic / instance, COCO format (what MMDetection's tools/misc/download_dataset.py
--dataset-name ade20k_2016 fetches: ADEChallengeData2016.zip, annotations_instance.tar,
imgCatIds.json, categoryMapping.txt; then its `tools/dataset_converters/ade20k2coco.py
data/ade/ADEChallengeData2016` for panoptic and the same with `--task instance`; it needs
panopticapi):
    data/ade/ADEChallengeData2016/
    |-- images/
    |   |-- training/      *.jpg
    |   `-- validation/    *.jpg
    |-- annotations/               semantic PNGs and
    |-- annotations_instance/      instance PNGs, read by the converter
    |-- ade20k_panoptic_train.json
    |-- ade20k_panoptic_train/     *.png
    |-- ade20k_panoptic_val.json
    |-- ade20k_panoptic_val/       *.png
    |-- ade20k_instance_train.json
    `-- ade20k_instance_val.json
The config reads `ann_file` and `data_prefix` relative to `data_root`."""

# Standard on-disk layouts, shown when a dataset is missing. Keyed by dataset type names.
DATASET_LAYOUTS = {
    'CocoDataset': """\
COCO 2017 (https://cocodataset.org: 2017 train/val images and annotations):
    data/coco/
    |-- annotations/
    |   |-- instances_train2017.json
    |   `-- instances_val2017.json
    |-- train2017/    *.jpg
    `-- val2017/      *.jpg
The config reads `ann_file` and `data_prefix.img` relative to `data_root`.""",
    'ADE20KDataset': """\
ADE20K (ADEChallengeData2016.zip from http://sceneparsing.csail.mit.edu):
    data/ade/ADEChallengeData2016/
    |-- images/
    |   |-- training/      *.jpg
    |   `-- validation/    *.jpg
    `-- annotations/
        |-- training/      *.png  (0 = other, 1..150 = classes; reduce_zero_label=True)
        `-- validation/    *.png
The config reads `data_prefix.img_path` and `data_prefix.seg_map_path` relative to
`data_root`.""",
    'CocoPanopticDataset': """\
COCO 2017 panoptic (https://cocodataset.org: 2017 train/val images, the panoptic annotations
with their PNG archives unzipped, and instances_val2017.json for box/mask AP):
    data/coco/
    |-- annotations/
    |   |-- panoptic_train2017.json
    |   |-- panoptic_train2017/    *.png
    |   |-- panoptic_val2017.json
    |   |-- panoptic_val2017/      *.png
    |   `-- instances_val2017.json
    |-- train2017/    *.jpg
    `-- val2017/      *.jpg
The config reads `ann_file`, `data_prefix.img` and `data_prefix.seg` relative to `data_root`.""",
    'CityscapesDataset': """\
Cityscapes (leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from
https://www.cityscapes-dataset.com), then, with `pip install cityscapesscripts`:
MMSegmentation's `tools/dataset_converters/cityscapes.py data/cityscapes` (semantic:
*_labelTrainIds.png) and MMDetection's `tools/dataset_converters/cityscapes.py data/cityscapes
--out-dir data/cityscapes/annotations` (instance: COCO-format json):
    data/cityscapes/
    |-- leftImg8bit/
    |   |-- train/<city>/  *_leftImg8bit.png
    |   `-- val/<city>/    *_leftImg8bit.png
    |-- gtFine/
    |   |-- train/<city>/  *_gtFine_labelTrainIds.png, *_gtFine_instanceIds.png, ...
    |   `-- val/<city>/
    `-- annotations/
        |-- instancesonly_filtered_gtFine_train.json
        `-- instancesonly_filtered_gtFine_val.json
The config reads `data_prefix` (and `ann_file` for instances) relative to `data_root`.""",
    'ADE20KPanopticDataset': _ADE20K_COCO_FORMAT,
    'ADE20KInstanceDataset': _ADE20K_COCO_FORMAT,
}


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """The flags train.py and test.py share: ``--cfg-options``, ``--launcher``, ``--local_rank``
    and ``--trust-checkpoint``."""
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override some settings in the used config, the key-value pair '
        'in xxx=yyy format will be merged into config file. If the value to '
        'be overwritten is a list, it should be like key="[a,b]" or key=a,b '
        'It also allows nested list/tuple values, e.g. key="[(a,b),(c,d)]" '
        'Note that the quotation marks are necessary and that no white space '
        'is allowed.')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none',
        help='job launcher')
    # torch.distributed.launch passes --local-rank (torch >= 2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    parser.add_argument(
        '--trust-checkpoint', action='store_true',
        help='unpickle the checkpoints of this run fully (resume, load_from, init_cfg), which '
        'runs any code they contain; only for files from a source you trust. Without it they '
        'are read with torch.load(weights_only=True) and an allow-list')


def parse_with_local_rank(parser: argparse.ArgumentParser,
                          argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """Parse, exporting ``LOCAL_RANK`` for launchers that only pass ``--local_rank``."""
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def import_codebase(cfg: Config, config_path: str = '') -> str:
    """Register the modules of the config's codebase (``default_scope``); returns the scope."""
    scope = cfg.get('default_scope')
    if scope not in SCOPE_UTILS:
        raise SystemExit(
            f'{config_path}: default_scope is {scope!r}, but these tools run MMDetection '
            "('mmdet') and MMSegmentation ('mmseg') configs. Inherit a default_runtime.py of "
            "mmdet or mmseg, or set default_scope = 'mmdet' / 'mmseg' in the config.")
    # The runner sets the default scope itself; only the registrations are needed here.
    importlib.import_module(SCOPE_UTILS[scope]).register_all_modules(init_default_scope=False)
    return scope


def load_config(path: str, cfg_options: Optional[Dict] = None,
                launcher: str = 'none') -> Config:
    """``Config.fromfile`` with a clear error for a missing file, a config without ``model``
    and a ``--cfg-options`` entry that does not fit the config; plus ``--cfg-options``.

    Also imports ``dinat_backbone`` and registers the codebase named by ``default_scope``.
    """
    if not osp.isfile(path):
        raise SystemExit(f'Config file not found: {path!r} (relative paths are resolved from '
                         f'the current directory, {os.getcwd()}).')
    import dinat_backbone  # noqa: F401  (registers DiNAT and the safe checkpoint loaders)

    cfg = Config.fromfile(path)
    cfg.launcher = launcher
    for key, value in (cfg_options or {}).items():  # one at a time, to name the one that fails
        try:
            cfg.merge_from_dict({key: value})
        except (TypeError, KeyError, AttributeError, ValueError) as error:
            reason = ' '.join(str(error).split())  # one line
            raise SystemExit(f'--cfg-options {key}={value!r} does not fit the config {path!r}: '
                             f'{type(error).__name__}: {reason}') from None
    import_codebase(cfg, path)  # first: another codebase's config is named as such
    if not isinstance(cfg.get('model'), dict):
        raise SystemExit(f'{path!r} defines no `model` (a dict with a `type`): it is not a model '
                         'config, or its `_base_` list misses the model file.')
    return cfg


def set_work_dir(cfg: Config, work_dir: Optional[str], config_path: str) -> None:
    """work_dir priority, as in mmdet/mmseg: CLI > config > ./work_dirs/<config name>.

    Exits with a message if it cannot be written (the Runner would fail only once built).
    """
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])
    try:
        check_writable_dir(cfg.work_dir, 'work_dir')
    except ValueError as error:
        raise SystemExit(str(error)) from None


# ------------------------------------------------------------------------ dataset path checks
def _leaf_datasets(dataset: Any) -> Iterator[Dict]:
    """The dataset configs inside wrappers (RepeatDataset, ConcatDataset, MultiImageMix...)."""
    if not isinstance(dataset, dict):
        return
    if dataset.get('datasets') is not None:
        for d in dataset['datasets']:
            yield from _leaf_datasets(d)
    elif dataset.get('dataset') is not None:
        yield from _leaf_datasets(dataset['dataset'])
    else:
        yield dataset


def _type_name(dataset: Dict) -> str:
    t = dataset.get('type', '')
    return t if isinstance(t, str) else getattr(t, '__name__', str(t))


def _join(root: str, path: str) -> str:
    # mmengine's BaseDataset._join_prefix: relative paths are joined to data_root.
    return path if not root or osp.isabs(path) else osp.join(root, path)


def _missing_paths(dataset: Dict) -> List[str]:
    """Paths a local dataset config needs that are absent, as 'path (what)' strings."""
    backend = (dataset.get('backend_args') or {}).get('backend', 'local')
    data_root = dataset.get('data_root') or ''
    ann_file = dataset.get('ann_file') or ''
    prefixes = dataset.get('data_prefix') or {}
    if backend != 'local' or any('://' in str(p) for p in [data_root, ann_file,
                                                           *prefixes.values()]):
        return []  # remote storage (petrel, s3, http...): nothing to check locally
    if data_root and not osp.isdir(data_root):
        return [f'{data_root} (data_root)']
    missing = []
    if ann_file and not osp.isfile(_join(data_root, ann_file)):
        missing.append(f'{_join(data_root, ann_file)} (ann_file)')
    for key, prefix in prefixes.items():
        if prefix and not osp.isdir(_join(data_root, prefix)):
            missing.append(f'{_join(data_root, prefix)} (data_prefix.{key})')
    return missing


def check_dataset_paths(cfg: Config, loaders: Sequence[str]) -> None:
    """Exit with the expected layout if a dataset of ``loaders`` is missing on disk.

    Checking before the Runner is built turns a deep ``FileNotFoundError`` (or, for the
    validation set, a crash hours into training) into a message that says what to put where.
    """
    for loader in loaders:
        dataloader = cfg.get(loader)
        if not dataloader or not isinstance(dataloader, dict):
            continue
        for dataset in _leaf_datasets(dataloader.get('dataset')):
            missing = _missing_paths(dataset)
            if not missing:
                continue
            data_root = dataset.get('data_root') or ''
            type_name = _type_name(dataset)
            expected = [f'    {_join(data_root, dataset["ann_file"])}  (ann_file)'
                        ] if dataset.get('ann_file') else []
            expected += [f'    {_join(data_root, p)}/  (data_prefix.{k})'
                         for k, p in (dataset.get('data_prefix') or {}).items() if p]
            lines = [
                f'Dataset for {loader} not found: {type_name} with data_root={data_root!r}.',
                'Missing:', *[f'    {m}' for m in missing],
                'This config expects:', *expected
            ]
            if type_name in DATASET_LAYOUTS:
                lines += ['', 'Standard layout of ' + DATASET_LAYOUTS[type_name]]
            if 'sample' in osp.basename(osp.dirname(osp.normpath(data_root))):
                lines += ['', 'This looks like the synthetic sample data; create it with',
                          '    python tools/make_sample_data.py --out '
                          f'{osp.dirname(osp.normpath(data_root))}']
            lines += ['', 'Put (or symlink) the data there, or point the config elsewhere, e.g.',
                      f'    --cfg-options {loader}.dataset.data_root=/path/to/data',
                      '(and the same for the other dataloaders).']
            raise SystemExit('\n'.join(lines))


# ----------------------------------------------------------------------- CPU-only distributed
def sync_bn_to_bn(node: Any) -> int:
    """Replace SyncBN norm configs by BN in place; returns how many were replaced."""
    count = 0
    if isinstance(node, dict):
        if node.get('type') in ('SyncBN', 'MMSyncBN'):
            node['type'] = 'BN'
            count += 1
        for value in node.values():
            count += sync_bn_to_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            count += sync_bn_to_bn(value)
    return count


def setup_distributed(cfg: Config, launcher: str) -> None:
    """Make ``--launcher pytorch`` work on machines without CUDA (no-op otherwise).

    mmengine 0.10.7's ``_init_dist_pytorch`` calls ``torch.cuda.set_device`` and its Runner
    wraps the model with ``device_ids=[LOCAL_RANK]``; both fail without CUDA. So we initialise
    the gloo process group here (the Runner then skips its own ``init_dist``) and build the
    DDP wrapper with ``device_ids=None``, which is what DDP wants for CPU modules. SyncBN
    layers have no CPU implementation (torch and mmcv), so they become per-process BN.
    """
    import torch
    import torch.distributed as dist
    from mmengine.logging import print_log

    if launcher == 'none' or torch.cuda.is_available():
        return
    if launcher != 'pytorch':
        raise SystemExit(
            f'--launcher {launcher} needs CUDA here: mmengine 0.10.7 calls '
            'torch.cuda.set_device while initialising it. On a machine without a GPU, launch '
            'with torchrun and --launcher pytorch (tools/dist_train.sh does that).')
    missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
               if k not in os.environ]
    if missing and not dist.is_initialized():
        raise SystemExit(
            f'--launcher pytorch expects the environment torchrun sets ({", ".join(missing)} '
            'missing). Start with `torchrun --nproc_per_node N tools/train.py CONFIG '
            '--launcher pytorch` or `bash tools/dist_train.sh CONFIG N`.')

    cfg.setdefault('env_cfg', ConfigDict())
    cfg.env_cfg.setdefault('dist_cfg', ConfigDict())
    cfg.env_cfg.dist_cfg.backend = 'gloo'
    if not dist.is_initialized():
        timeout = cfg.env_cfg.dist_cfg.get('timeout')
        kwargs = {} if timeout is None else dict(timeout=datetime.timedelta(seconds=timeout))
        dist.init_process_group(backend='gloo', **kwargs)  # env:// from torchrun

    wrapper = cfg.get('model_wrapper_cfg') or ConfigDict()
    wrapper.setdefault('type', 'MMDistributedDataParallel')
    if wrapper['type'] in ('MMDistributedDataParallel', 'MMSeparateDistributedDataParallel'):
        wrapper['device_ids'] = None
        # The Runner only reads these when it builds the wrapper itself; keep its defaults.
        wrapper.setdefault('broadcast_buffers', False)
        wrapper.setdefault('find_unused_parameters', cfg.get('find_unused_parameters', False))
    cfg.model_wrapper_cfg = wrapper

    if sync_bn_to_bn(cfg.model):
        print_log('No CUDA: SyncBN layers replaced by BN (statistics per process); SyncBN '
                  'has no CPU implementation.', logger='current', level=logging.WARNING)
    cfg.pop('sync_bn', None)


# ------------------------------------------------------------------------------------- runner
def build_runner(cfg: Config) -> Any:
    """The Runner of ``cfg`` (``runner_type`` if set), as mmdet's/mmseg's tools build it."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner
    return Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)


@contextlib.contextmanager
def loading_checkpoints(trusted: bool) -> Iterator[None]:
    """Run the Runner in this: checkpoints unpickled fully only with ``--trust-checkpoint``,
    and a refused one ends the tool with the message that names the fix."""
    from ..weights.safe_loading import CheckpointReadError, trust_checkpoints
    try:
        with trust_checkpoints(trusted):
            yield
    except CheckpointReadError as error:  # refused, damaged or truncated
        raise SystemExit(f'error: {error}') from None
