"""What ``--scheduler`` may name, and a quick look that a scheduler's address answers.

Accepted: ``threads``, ``processes``, ``sync``, or the address of a ``distributed`` scheduler
(``tcp://host:8786``, ``tls://...``, ``ws://...``, ``wss://...``, ``inproc://...``,
``ucx://...``, or ``host:port`` for TCP). Only the standard library is imported here.
"""

from __future__ import annotations

import re
import socket

from geoseg.errors import UserInputError

__all__ = ["ACCEPTED", "LOCAL_SCHEDULERS", "check_reachable", "check_scheduler", "is_local"]

LOCAL_SCHEDULERS = ("threads", "processes", "sync")
_ADDRESS = re.compile(r"^(?:(tcp|tls|ws|wss|ucx|inproc)://)?(\[[^\]]+\]|[^:/\s]+)(?::(\d+))?$")
ACCEPTED = "threads, processes, or a Dask scheduler address such as tcp://host:8786"
CONNECT_TIMEOUT_S = 5.0


def is_local(scheduler: object) -> bool:
    """Whether ``scheduler`` names one of Dask's local schedulers (not an address, a
    ``Client`` or a ``Cluster``)."""
    return isinstance(scheduler, str) and scheduler in LOCAL_SCHEDULERS


def check_scheduler(value: str) -> str:
    """``value`` if it is a local scheduler or looks like an address, else a one-line
    :class:`~geoseg.errors.UserInputError` naming the accepted forms."""
    if value in LOCAL_SCHEDULERS:
        return value
    match = _ADDRESS.match(value)
    if match and (match.group(1) or match.group(3)):
        return value
    raise UserInputError(f"--scheduler {value!r}: use {ACCEPTED}")


def check_reachable(address: str) -> None:
    """For a TCP or TLS address, fail at once (not after the client's retries) when nothing
    listens there: a one-line :class:`~geoseg.errors.UserInputError`."""
    match = _ADDRESS.match(address)
    if not match or match.group(1) not in (None, "tcp", "tls") or not match.group(3):
        return
    host, port = match.group(2).strip("[]"), int(match.group(3))
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserInputError(
            f"--scheduler {address}: cannot reach a Dask scheduler ({reason}); is it running?"
        ) from None
