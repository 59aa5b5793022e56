"""The module paths of the flat layout (before the package was grouped by concern) still import.

``import dinat_backbone.features`` returns :mod:`dinat_backbone.apis.features` itself (not a
copy), with a ``FutureWarning`` naming the new path. Modules load only when asked for.
"""
import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Dict, Optional, Sequence

# old module -> new module, under the package
MOVED_MODULES = {
    'checkpoint': 'weights',
    'task_checkpoint': 'weights.task',
    'model_zoo': 'weights.zoo',
    'safe_loading': 'weights.safe_loading',
    'compat': 'weights.mmengine_loaders',
    'checkpoint_hook': 'engine.checkpoint_hook',
    'metrics': 'engine.metrics',
    'runner': 'engine.runner',
    'cli': 'engine.cli',
    'features': 'apis.features',
    'classification': 'apis.classification',
    'flops': 'analysis.flops',
    'benchmark_utils': 'analysis.benchmark_utils',
    'sample_data': 'datasets.sample_data',
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``<package>.<old name>`` of :data:`MOVED_MODULES` to the module's new path."""

    def __init__(self, package: str) -> None:
        self.moved = {f'{package}.{old}': f'{package}.{new}' for old, new in MOVED_MODULES.items()}
        self._specs: Dict[str, ModuleSpec] = {}

    def find_spec(self, fullname: str, path: Optional[Sequence[str]],
                  target: Optional[ModuleType] = None) -> Optional[ModuleSpec]:
        if fullname not in self.moved:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        new = self.moved[spec.name]
        warnings.warn(f'{spec.name} moved to {new}; import it from there.', FutureWarning,
                      stacklevel=2)
        module = importlib.import_module(new)
        self._specs[new] = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system has just set the alias's spec on the (shared) module: restore the
        # module's own, so that it keeps its real name for reloads and tools.
        module.__spec__ = self._specs[module.__name__]


def install(package: str) -> None:
    """Add the finder for ``package`` to ``sys.meta_path`` (once)."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder(package))
