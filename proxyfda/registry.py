"""Name → factory tables filled by a decorator (timm-style), so the UI and CLI can list what exists."""

from __future__ import annotations

from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)


class Registry(dict):
    """A dict of factories by name; ``@registry.register("name")`` adds one."""

    def register(self, name: str) -> Callable[[F], F]:
        def wrap(factory: F) -> F:
            self[name] = factory
            return factory

        return wrap

    def names(self) -> list[str]:
        return sorted(self)
