"""Import paths of modules that moved into the packages (``router.core``,
``router.decide``, ``router.ingest``): they keep working for users' code, with a
:class:`DeprecationWarning` naming the new path.

A finder on ``sys.meta_path`` answers for the old names and hands back the very module
object of the new path, so ``router.engine.Router is router.decide.engine.Router`` and a
monkeypatch through either name is seen by both.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from types import ModuleType

_CORE = ("columns", "config", "economics", "errors", "fingerprint", "identity", "keyed_hash",
         "logs", "messages", "reasons", "routing", "rules", "windows")  # fmt: skip
_DECIDE = ("allocate", "allocate_compiled", "assess", "assess_one", "engine", "features",
           "outcomes", "partners")  # fmt: skip

#: Old module path -> where it lives now.
MOVED: dict[str, str] = {
    **{f"router.{m}": f"router.core.{m}" for m in _CORE},
    **{f"router.{m}": f"router.decide.{m}" for m in _DECIDE},
    "router.replay.reader": "router.ingest.reader",
    "router.replay.validate": "router.ingest.validate",
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return None  # the default module, replaced in exec_module

    def exec_module(self, module: ModuleType) -> None:
        new = MOVED[module.__name__]
        warnings.warn(
            f"{module.__name__} moved to {new}; import it from there",
            DeprecationWarning,
            stacklevel=2,
        )
        # The import system returns what sys.modules holds after this: the real module.
        sys.modules[module.__name__] = importlib.import_module(new)


def install() -> None:
    """Answer for the old import paths (idempotent)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder())
