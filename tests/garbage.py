"""Counting the cyclic garbage that a piece of code makes, and only that.

Objects in a reference cycle are freed only by the cyclic collector, whose passes stop the
event loop for every session; a test here runs ``action`` and names the objects it left in
cycles. Everything alive before is held meanwhile, so what an earlier test left behind (an
app a finished task let go of, say) cannot turn into garbage during the count.
"""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Awaitable, Callable


async def cyclic_garbage(action: Callable[[], Awaitable[object]]) -> Counter[str]:
    """The types (``module.name``) of the objects ``action`` created and left in
    reference cycles."""
    gc.collect()
    alive = gc.get_objects()  # held: none of them can become garbage meanwhile
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        await action()
        gc.collect()
        return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        del alive
