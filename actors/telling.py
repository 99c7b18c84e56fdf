"""`tell_quietly`: tell an actor that may have stopped, without an exception for it."""

from __future__ import annotations

from typing import Any

from pykka import ActorDeadError, ActorRef


def tell_quietly(ref: ActorRef[Any], message: object) -> bool:
    """Tell `message`; False (not an exception) if the actor is dead: the call is ending."""
    try:
        ref.tell(message)
    except ActorDeadError:
        return False
    return True
