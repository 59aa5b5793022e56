"""Fixes for running the 2023-era OpenMMLab stack on current PyTorch, applied on import.

torch >= 2.6 makes ``torch.load`` default to ``weights_only=True``, which rejects mmengine's
checkpoints (they pickle ``HistoryBuffer``, numpy scalars, config objects) and so breaks
``load_from``, ``--resume`` and ``init_cfg=dict(type='Pretrained')``. We re-register mmengine's
local-file and http(s) checkpoint loaders with ``weights_only=False``: checkpoints are files
the user points at, exactly what mmengine loaded before torch changed the default.
"""
import os.path as osp
from typing import Any, Optional

import torch
from mmengine.runner.checkpoint import CheckpointLoader

__all__ = ['load_trusted_checkpoint']


def load_trusted_checkpoint(filename: str, map_location: Any = None) -> Any:
    """``torch.load`` of a local checkpoint with full unpickling (``weights_only=False``)."""
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'Checkpoint file not found: {filename}')
    return torch.load(filename, map_location=map_location, weights_only=False)


@CheckpointLoader.register_scheme(prefixes='', force=True)
def _load_from_local(filename: str, map_location: Any = None) -> Any:
    return load_trusted_checkpoint(filename, map_location)


@CheckpointLoader.register_scheme(prefixes=('http://', 'https://'), force=True)
def _load_from_http(filename: str, map_location: Any = None, model_dir: Optional[str] = None,
                    progress: bool = True) -> Any:
    # Downloaded once into torch's hub cache (~/.cache/torch/hub/checkpoints), as mmengine does.
    return torch.hub.load_state_dict_from_url(filename, model_dir=model_dir,
                                              map_location=map_location, progress=progress,
                                              weights_only=False)
