"""Old module paths of nowblock 0.1 that still import, with a DeprecationWarning, until 0.3.

The 0.2 layout puts each layer in a folder (``nowblock.block``, ``nowblock.seam``, ...). Code
written against the flat 0.1 modules keeps working: ``import nowblock.site`` returns the very
module object ``nowblock.block.site`` (so patches and ``isinstance`` checks behave), after a
warning that names the new path. Only the names in :data:`MOVED` are handled; this finder
answers for nothing else.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

#: old module -> new module(s); with several, attributes are looked up in order.
MOVED: dict[str, tuple[str, ...]] = {
    "nowblock.site": ("nowblock.block.site",),
    "nowblock.sessions": ("nowblock.block.sessions",),
    "nowblock.scenario": ("nowblock.block.scenario",),
    "nowblock.synth": ("nowblock.block.synth", "nowblock.block.scenario"),
    "nowblock.interface": ("nowblock.seam",),
    "nowblock.closed_loop": ("nowblock.loop.closed_loop", "nowblock.seam.safety"),
    "nowblock.plot": ("nowblock.sim.plot",),
    "nowblock.demo": ("nowblock.cli.demo",),
    "nowblock.sim.cli": ("nowblock.cli.simulate",),
    "nowblock.ocpp.cli": ("nowblock.cli.serve",),
    "nowblock.ocpp.testing": ("nowblock.testing",),
}

#: old package -> new package: every submodule moved with it.
MOVED_PACKAGES: dict[str, str] = {"nowblock.optimize": "nowblock.milp"}


class _Alias(importlib.abc.Loader):
    def __init__(self, targets: tuple[str, ...]) -> None:
        self.targets = targets

    def create_module(self, spec):
        return None  # a plain module; exec_module swaps in the real one

    def exec_module(self, module: types.ModuleType) -> None:
        name = module.__name__
        warnings.warn(f"{name} moved to {self.targets[0]}; the old path goes away in nowblock 0.3",
                      DeprecationWarning, stacklevel=2)
        mods = [importlib.import_module(t) for t in self.targets]
        if len(mods) == 1:
            sys.modules[name] = mods[0]  # the import system returns what sys.modules holds now
            return

        def __getattr__(attr: str):
            for m in mods:
                if hasattr(m, attr):
                    return getattr(m, attr)
            raise AttributeError(f"module {name!r} has no attribute {attr!r}")

        module.__getattr__ = __getattr__  # type: ignore[method-assign]
        module.__doc__ = f"Moved: see {', '.join(self.targets)}."


class _CallablePackage(types.ModuleType):
    """``nowblock.optimize`` of 0.1 was both the package and, called, the function."""

    def __call__(self, *args, **kwargs):
        return self.optimize(*args, **kwargs)


class _PackageAlias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):
        return _CallablePackage(spec.name)

    def exec_module(self, module: types.ModuleType) -> None:
        warnings.warn(f"{module.__name__} moved to {self.target}; the old path goes away in nowblock 0.3",
                      DeprecationWarning, stacklevel=2)
        real = importlib.import_module(self.target)
        module.__path__ = []  # a package, so that old submodule paths import too
        module.__getattr__ = lambda attr: getattr(real, attr)  # type: ignore[method-assign]
        module.__doc__ = f"Moved: see {self.target}."


class _MovedFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        targets = MOVED.get(fullname)
        if targets is not None:
            return importlib.util.spec_from_loader(fullname, _Alias(targets))
        if fullname in MOVED_PACKAGES:
            return importlib.util.spec_from_loader(fullname, _PackageAlias(MOVED_PACKAGES[fullname]), is_package=True)
        for old, new in MOVED_PACKAGES.items():
            if fullname.startswith(old + "."):
                return importlib.util.spec_from_loader(fullname, _Alias((new + fullname[len(old):],)))
        return None


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (``import nowblock`` calls this)."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
