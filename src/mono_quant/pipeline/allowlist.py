"""Which ``factory:`` targets may be imported: factories are code, so running one is opt-in.

A factory source names ``module:callable``; importing the module runs its code and calling
the callable runs more. The service lets a manifest (or a catalog row) name only modules that
match the operator's allow-list, the ``MONO_QUANT_ALLOWED_FACTORIES`` setting. The library
never reads settings: callers pass a :class:`FactoryAllowList` in (``None`` means the caller
vouches for the source itself, as any Python code calling the library does).

The check runs twice: on the module name **before** anything is imported, and on the
callable that was found (its ``__module__``), so ``allowed.module:os.system`` cannot reach
another module's function through an attribute path.

Example:
    >>> allow = FactoryAllowList.parse("mono_quant.*, tests.jobfixtures")
    >>> allow.allows("mono_quant.demo_models"), allow.allows("os")
    (True, False)
    >>> allow.check_target("os:system", "factory:os:system")
    Traceback (most recent call last):
    ...
    mono_quant.errors.BadConfigError: factory:os:system: factory module 'os' is not allowed by \
MONO_QUANT_ALLOWED_FACTORIES (mono_quant.*,tests.jobfixtures); add a pattern for it there if \
you trust its code
"""

from __future__ import annotations

import types
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

from mono_quant.errors import BadConfigError

__all__ = ["SETTING", "FactoryAllowList"]

#: The setting that holds the patterns (named in every refusal, so the fix is obvious).
SETTING = "MONO_QUANT_ALLOWED_FACTORIES"


@dataclass(frozen=True)
class FactoryAllowList:
    """Module patterns (``fnmatch``, case-sensitive): ``pkg.*``, ``pkg.mod``, or ``*`` (all).

    ``pkg.*`` matches the modules inside ``pkg`` and ``pkg`` itself. No patterns: nothing is
    allowed. (The service's default, ``mono_quant.*``, is the setting's, in ``config``.)
    """

    patterns: tuple[str, ...]
    #: Targets :meth:`check_target` allowed (the patterns are fixed: so is the answer).
    _allowed: set[str] = field(default_factory=set, init=False, repr=False, compare=False)

    @classmethod
    def parse(cls, text: str | None) -> FactoryAllowList:
        """From comma-separated patterns, as in the setting."""
        return cls(tuple(p.strip() for p in (text or "").split(",") if p.strip()))

    def allows(self, module: str) -> bool:
        """Whether ``module`` (a dotted module name) matches one of the patterns."""
        for pattern in self.patterns:
            if fnmatchcase(module, pattern):
                return True
            if pattern.endswith(".*") and module == pattern[:-2]:
                return True
        return False

    def _refuse(self, module: str, text: str, how: str) -> BadConfigError:
        return BadConfigError(
            f"{text}: factory {how} {module!r} is not allowed by {SETTING} "
            f"({','.join(self.patterns)}); add a pattern for it there if you trust its code"
        )

    def check_target(self, target: str, text: str) -> None:
        """Refuse ``module:callable`` before importing anything (BadConfigError). A target
        once allowed is remembered (a generated manifest names one factory thousands of
        times)."""
        if target in self._allowed:
            return
        module, _, attr = str(target).partition(":")
        if not self.allows(module):
            raise self._refuse(module, text, "module")
        private = [p for p in attr.split(".") if p.startswith("_")]
        if private:
            raise BadConfigError(
                f"{text}: factory attribute {private[0]!r} is private; name a public callable"
            )
        if type(target) is str and len(self._allowed) < 1024:
            self._allowed.add(target)

    def check_callable(self, obj: Any, text: str) -> None:
        """Refuse a callable found in an allowed module but defined elsewhere."""
        if isinstance(obj, types.ModuleType):
            raise self._refuse(obj.__name__, text, "module")
        home = getattr(obj, "__module__", None) or type(obj).__module__
        if not isinstance(home, str) or not self.allows(home):
            raise self._refuse(str(home), text, "callable defined in")
