"""Corporate actions and index changes: a registry of handlers, one per action type.

Each handler validates its action against the current state first (returning a reason code
and changing nothing when it cannot be applied), then describes the change as a closure and
hands it to :meth:`ActionContext.adjust`, the single divisor adjustment: sums before and after
at the same prices.  Handlers see the engine only through :class:`ActionContext`, a narrow
view: the universe's mutation API, a few per-index facts, and the adjustment itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from streamer.engine.actions.context import ActionContext, Outcome
from streamer.wire import Action

A = TypeVar("A")
Handler = Callable[[ActionContext, Any, int], Outcome]

_HANDLERS: dict[type, Handler] = {}


def handles(action_type: type[A]) -> Callable[[Callable[[ActionContext, A, int], Outcome]], Any]:
    """Register the handler of one action type."""

    def register(handler: Callable[[ActionContext, A, int], Outcome]) -> Any:
        _HANDLERS[action_type] = handler
        return handler

    return register


def apply_action(context: ActionContext, action: Action, effective: int) -> Outcome:
    """Apply one due action: its audit records, or the reason it was rejected."""
    handler = _HANDLERS.get(type(action))
    if handler is None:
        return "unknown_action"
    return handler(context, action, effective)


# The handlers register themselves on import.
from streamer.engine.actions import fund_changes, index_changes, symbol_events  # noqa: E402, F401

__all__ = ["ActionContext", "Outcome", "apply_action", "handles"]
