"""The code part of a node's fingerprint: the node function's source and, transitively, the
source of every project function, class and module it references by a global name (walking the
code objects' names, closures and default values), plus the constants those names bind to.

"Project" = the project's package (``tangshi_pipeline``, Kedro's ``PACKAGE_NAME``) wherever it is
installed — an installed wheel too — and any other module whose file is not inside the Python
installation or site-packages (test modules). Library code is identified by name and version.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import sys
import sysconfig
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kedro.framework.project as kedro_project

from .digest import new_hasher


def _library_roots() -> tuple[str, ...]:
    roots = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    for name in ("stdlib", "platstdlib", "purelib", "platlib"):
        try:
            roots.add(sysconfig.get_paths()[name])
        except KeyError:
            pass
    return tuple(sorted({os.path.realpath(r) + os.sep for r in roots if r}))


_LIB_ROOTS = _library_roots()


def _project_packages() -> set[str]:
    """The project's own top-level packages: this one and Kedro's configured ``PACKAGE_NAME``."""
    return {__name__.split(".")[0], kedro_project.PACKAGE_NAME} - {None, ""}


def _owned_module(name: str) -> bool:
    """A module of this project (or its tests), as opposed to the stdlib or an installed library.
    The project's own package counts as the project's wherever it is installed (site-packages
    after ``kedro package`` + ``pip install``), so its code is always fingerprinted by content."""
    top = name.split(".")[0]
    return top in _project_packages() or _outside_libraries(name)


@functools.lru_cache(maxsize=None)
def _outside_libraries(name: str) -> bool:
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    if not file:
        return name == "__main__"
    return not os.path.realpath(file).startswith(_LIB_ROOTS)


def _external_id(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or getattr(obj, "__name__", "?")
    top = sys.modules.get(str(module).split(".")[0])
    version = getattr(top, "__version__", "")
    return f"ext:{module}.{getattr(obj, '__qualname__', getattr(obj, '__name__', type(obj).__name__))}@{version}"


def _code_objects(code: types.CodeType):
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


class CodeFingerprint:
    """Digest of a callable and of the project code and constants it reaches by global names."""

    def __init__(self):
        self._memo: dict[int, tuple[Any, str]] = {}  # id → (object, digest): each object hashed once
        self._active: set[int] = set()
        self._cycle = False

    def digest(self, obj: Any) -> str:
        return self._sub(obj)

    def _sub(self, obj: Any) -> str:
        """The digest of one function, class or module (memoised; a cycle gets a placeholder)."""
        hit = self._memo.get(id(obj))
        if hit is not None and hit[0] is obj:
            return hit[1]
        if id(obj) in self._active:
            self._cycle = True
            return f"<cycle {getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}>"
        self._active.add(id(obj))
        outer_cycle, self._cycle = self._cycle, False
        try:
            h = new_hasher()
            self._visit(obj, h, set())
            digest = h.hexdigest()
        finally:
            self._active.discard(id(obj))
        if not self._cycle:  # a digest that used a placeholder depends on where hashing began
            self._memo[id(obj)] = (obj, digest)
        self._cycle = self._cycle or outer_cycle
        return digest

    def _feed(self, h, text: str) -> None:
        h.update(text.encode("utf-8", "surrogatepass"))
        h.update(b"\0")

    def _source(self, obj: Any) -> str:
        try:
            return inspect.getsource(obj)
        except (OSError, TypeError):
            code = getattr(obj, "__code__", None)
            return repr(code.co_code) if code else getattr(obj, "__qualname__", repr(obj))

    def _visit(self, obj: Any, h, seen: set[int]) -> None:
        """Feed ``obj`` into ``h``: a partial or method by what it wraps, project code by its
        source and what it reaches, library code by name and version, anything else by value."""
        if id(obj) in seen:
            self._feed(h, "<seen>")
            return
        seen.add(id(obj))
        if isinstance(obj, functools.partial):
            self._feed(h, "partial")
            self._feed(h, self._sub(obj.func))
            self._value(obj.args, h, seen)
            self._value(obj.keywords, h, seen)
        elif inspect.ismethod(obj):
            self._feed(h, self._sub(obj.__func__))
            self._value(obj.__self__, h, seen)
        elif inspect.isfunction(obj) or inspect.isclass(obj) or inspect.ismodule(obj):
            module = obj.__name__ if inspect.ismodule(obj) else obj.__module__
            if not _owned_module(module):
                self._feed(h, _external_id(obj))
            elif inspect.isfunction(obj):
                self._function(obj, h, seen)
            elif inspect.isclass(obj):
                self._class(obj, h)
            else:
                self._module(obj, h)
        else:
            self._value(obj, h, seen)

    def _function(self, obj: types.FunctionType, h, seen: set[int]) -> None:
        """A project function: its source, the globals its code names, its closure and defaults."""
        self._feed(h, f"def {obj.__module__}.{obj.__qualname__}")
        self._feed(h, self._source(obj))
        g = obj.__globals__
        for code in _code_objects(obj.__code__):
            for name in code.co_names:
                if name in g:
                    self._feed(h, f"global {name}")
                    self._value(g[name], h, seen)
        for cell in obj.__closure__ or ():
            try:
                self._value(cell.cell_contents, h, seen)
            except ValueError:  # an empty cell
                pass
        self._value(obj.__defaults__, h, seen)
        self._value(obj.__kwdefaults__, h, seen)

    def _class(self, obj: type, h) -> None:
        """A project class: its source, its project bases, and its methods and properties."""
        self._feed(h, f"class {obj.__module__}.{obj.__qualname__}")
        self._feed(h, self._source(obj))
        for base in obj.__mro__[1:]:
            if _owned_module(base.__module__):
                self._feed(h, self._sub(base))
        for member in vars(obj).values():
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if isinstance(member, property):
                for f in (member.fget, member.fset):
                    if f is not None:
                        self._feed(h, self._sub(f))
            elif inspect.isfunction(member):
                self._feed(h, self._sub(member))

    def _module(self, obj: types.ModuleType, h) -> None:
        """A project module: its file, and the functions and classes defined in it."""
        try:
            self._feed(h, Path(obj.__file__).read_text("utf-8"))
        except (OSError, TypeError):
            self._feed(h, obj.__name__)
        for member in vars(obj).values():
            if (inspect.isfunction(member) or inspect.isclass(member)) and member.__module__ == obj.__name__:
                self._feed(h, self._sub(member))

    def _value(self, value: Any, h, seen: set[int]) -> None:
        """A constant: by value; code inside it by its code."""
        if value is None or isinstance(value, (bool, int, float, complex, str, bytes)):
            self._feed(h, repr(value))
        elif isinstance(value, (types.FunctionType, type, types.ModuleType)):
            self._feed(h, self._sub(value))
        elif isinstance(value, (functools.partial, types.MethodType)):
            self._visit(value, h, seen)
        elif isinstance(value, (list, tuple)):
            self._feed(h, f"{type(value).__name__}[{len(value)}]")
            for item in value:
                self._value(item, h, seen)
        elif isinstance(value, (set, frozenset)):
            self._feed(h, f"set[{len(value)}]")
            for item in sorted(value, key=repr):
                self._value(item, h, seen)
        elif isinstance(value, Mapping):
            self._feed(h, f"map[{len(value)}]")
            for key in sorted(value, key=repr):
                self._feed(h, repr(key))
                self._value(value[key], h, seen)
        elif isinstance(value, re.Pattern):
            self._feed(h, f"re:{value.pattern!r}:{value.flags}")
        else:
            cls = type(value)
            if _owned_module(cls.__module__):
                self._feed(h, self._sub(cls))
            else:
                self._feed(h, _external_id(cls))
            text = repr(value)
            self._feed(h, re.sub(r" at 0x[0-9a-f]+", "", text))
