"""References from a loaded room's parts back to the room, held weakly.

A room wires its parts with references back to itself: a part's ``room``, a callback
that is a method of the room, a runner's method the room calls. Held strongly, each is a
reference cycle, and a room unloaded was then freed only by a full collection of the
cyclic collector, which the server's raised thresholds (``cli.GC_THRESHOLDS``) all but
never run, and which walks every object of every room still loaded when it does (0.2 s of
the event loop with a 20,000-entry room loaded: review RN-5). Held weakly, a room is freed
by reference counting alone once its last holder lets go (the registry, its runner, a
request in flight), and its parts with it.

Whoever holds a part holds the room too (a part is reached through its room), so a back
reference found dead is a bug: it raises ``ReferenceError``, as a ``weakref.proxy`` would.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any, Generic, ParamSpec, TypeVar, overload

T = TypeVar("T")
P = ParamSpec("P")
R = TypeVar("R")


class BackReference(Generic[T]):
    """An attribute that holds its value weakly: ``room: BackReference[SessionRoom] =
    BackReference()`` in the class, ``self.room = room`` and ``self.room`` as before."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type) -> BackReference[T]: ...

    @overload
    def __get__(self, instance: object, owner: type) -> T: ...

    def __get__(self, instance: object | None, owner: type) -> BackReference[T] | T:
        if instance is None:
            return self
        value: T | None = instance.__dict__[self.name]()
        if value is None:
            raise ReferenceError(f"{type(instance).__qualname__}.{self.name} is gone")
        return value

    def __set__(self, instance: object, value: T) -> None:
        instance.__dict__[self.name] = weakref.ref(value)


def weak_method(method: Callable[P, R]) -> Callable[P, R]:
    """``method`` (a bound method) holding its object weakly: called once the object is
    gone, it raises ``ReferenceError``."""
    reference: weakref.WeakMethod[Any] = weakref.WeakMethod(method)
    name = method.__qualname__

    def call(*args: P.args, **kwargs: P.kwargs) -> R:
        target = reference()
        if target is None:
            raise ReferenceError(f"{name}: its object is gone")
        result: R = target(*args, **kwargs)
        return result

    return call
