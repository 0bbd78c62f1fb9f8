"""Optional redaction of free text (``reason``) before it is chained.

A reason is hashed into the chain forever, so it must not name people or carry
personal data. The policy's ``[privacy]`` table may add a safety net::

    [privacy]
    redact_patterns = ['[\\w.+-]+@[\\w-]+\\.[\\w.]+', '\\+?\\d[\\d ()-]{7,}\\d']
    redact_hook = "mycompany.audit:scrub_reason"   # a callable str -> str

Every match of a pattern becomes ``[redacted]``; the hook, when named, runs
after the patterns on the result. A pattern that does not compile or a hook that
cannot be imported is a ConfigError at start, never a silent pass-through.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from producers.errors import ConfigError

MARK = "[redacted]"


@dataclass(frozen=True)
class Redactor:
    patterns: tuple[re.Pattern[str], ...] = ()
    hook: Callable[[str], str] | None = None

    @classmethod
    def from_policy(cls, privacy: dict[str, Any], source: str) -> Redactor:
        raw = privacy.get("redact_patterns", [])
        if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
            raise ConfigError(f"{source} [privacy]: redact_patterns must be a list of strings")
        patterns = []
        for text in raw:
            try:
                patterns.append(re.compile(text))
            except re.error as exc:
                raise ConfigError(f"{source} [privacy]: pattern {text!r}: {exc}") from None
        hook_name = privacy.get("redact_hook")
        return cls(tuple(patterns), _import_hook(hook_name, source) if hook_name else None)

    @property
    def active(self) -> bool:
        return bool(self.patterns) or self.hook is not None

    def __call__(self, text: str) -> str:
        for pattern in self.patterns:
            text = pattern.sub(MARK, text)
        if self.hook is not None:
            result = self.hook(text)
            if not isinstance(result, str):
                raise ConfigError("the policy's redact_hook must return a string")
            text = result
        return text


def _import_hook(name: object, source: str) -> Callable[[str], str]:
    if not isinstance(name, str) or ":" not in name:
        raise ConfigError(
            f'{source} [privacy]: redact_hook must look like "package.module:function"'
        )
    module_name, _, attribute = name.partition(":")
    try:
        hook = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{source} [privacy]: cannot load redact_hook {name!r}: {exc}") from None
    if not callable(hook):
        raise ConfigError(f"{source} [privacy]: redact_hook {name!r} is not callable")
    return hook
