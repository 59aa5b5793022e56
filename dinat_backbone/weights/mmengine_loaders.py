"""Fixes for running the 2023-era OpenMMLab stack on current PyTorch, applied on import.

torch >= 2.6 makes ``torch.load`` default to ``weights_only=True``, which rejects mmengine's
own checkpoints (they pickle ``HistoryBuffer`` and numpy values) and so breaks ``load_from``,
``--resume`` and ``init_cfg=dict(type='Pretrained')``. We re-register mmengine's local-file
and http(s) checkpoint loaders with
:func:`~dinat_backbone.weights.safe_loading.load_checkpoint_file`: still ``weights_only=True``,
with an allow-list of what those checkpoints hold, and full unpickling only inside
:func:`~dinat_backbone.weights.safe_loading.trust_checkpoints` (the tools'
``--trust-checkpoint``). URLs are cached per full URL
(:func:`~dinat_backbone.weights.safe_loading.download_checkpoint`).
"""
from typing import Any, Optional

import torch
from mmengine.dist import get_dist_info
from mmengine.runner.checkpoint import CheckpointLoader

from .safe_loading import download_checkpoint, load_checkpoint_file


@CheckpointLoader.register_scheme(prefixes='', force=True)
def _load_from_local(filename: str, map_location: Any = None) -> Any:
    return load_checkpoint_file(filename, map_location)


@CheckpointLoader.register_scheme(prefixes=('http://', 'https://'), force=True)
def _load_from_http(filename: str, map_location: Any = None, model_dir: Optional[str] = None,
                    progress: bool = True) -> Any:
    # As mmengine's loader: rank 0 downloads while the other ranks wait, then all read the file.
    rank, world_size = get_dist_info()
    if rank == 0:
        path = download_checkpoint(filename, model_dir, progress)
    if world_size > 1:
        torch.distributed.barrier()
        if rank > 0:
            path = download_checkpoint(filename, model_dir, progress)
    return load_checkpoint_file(path, map_location)
