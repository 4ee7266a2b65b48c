"""Every task message is checked before Celery's own handler turns it into a request.

Celery builds the request inside the worker's consumer loop. A body that is not the protocol-2
``[args, kwargs, embed]`` triple, headers without an ``id``, an odd ``timelimit`` or a task
name that is not a string raise there (ValueError, KeyError, TypeError): an unrecoverable
error, the worker dies, the unacknowledged message goes back to the queue and kills the next
worker too. Only ``InvalidTaskError`` (and an undecodable or disallowed body) is handled
cleanly: logged once with the body cut to 1 KiB, and rejected without requeue. So every task
of the app (``task_cls``) checks its messages first and raises that, with a short reason; the
consumer (``worker_consumer``) checks the size and the task name's type even earlier, since an
unhashable name fails before any task's strategy is reached. Protocol 1 and hybrid bodies are
refused too: every sender of this app (Beat, ``svc trigger``, a retry) writes protocol 2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery.exceptions import InvalidTaskError
from celery.worker.consumer import Consumer
from kombu.exceptions import ContentDisallowed
from kombu.message import Message

from services.fields import LATEST_TIME, REQUESTED_KINDS

MAX_MESSAGE_BYTES = 64 * 1024
"""A tick's message is well under 2 KiB; anything this big is not one of ours."""
SERVICE_TASK_PREFIX = "svc."  # beat_schedule.task_name
_EMBED_TYPES: dict[str, type] = {"callbacks": list, "errbacks": list, "chain": list,
                                 "chord": dict}


class CheckedTask(Task):
    """The base of every task of the app: a malformed message is rejected, not fatal."""

    def start_strategy(self, app: Celery, consumer: Any, **kwargs: Any) -> Callable[..., Any]:
        # Celery's Task and Consumer are unannotated, and mypy's untyped_calls_exclude does
        # not reach calls through super().
        handle = super().start_strategy(app, consumer, **kwargs)  # type: ignore[no-untyped-call]
        name = str(self.name)

        def checked(message: Message, body: Any, *args: Any, **options: Any) -> Any:
            check_message(name, message, body)
            return handle(message, body, *args, **options)

        return checked


class CheckedConsumer(Consumer):
    """Celery's consumer, refusing what fails before a task's strategy is reached."""

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Message], Any]:
        handle: Callable[[Message], Any] = super().create_task_handler(  # type: ignore[no-untyped-call]
            *args, **kwargs)

        def on_task_received(message: Message) -> Any:
            try:
                check_envelope(message)
            except InvalidTaskError as exc:
                return self.on_invalid_task(None, message, exc)  # type: ignore[no-untyped-call]
            return handle(message)

        return on_task_received


def check_envelope(message: Message) -> None:
    """Raise ``InvalidTaskError`` for a message too big to be ours, or whose task name (in the
    headers, or in a protocol-1 body) is not a string."""
    headers = message.headers
    if not isinstance(headers, dict):
        return  # Celery logs and rejects it as an unknown message
    size = len(message.body or b"") + sum(len(str(k)) + len(str(v)) for k, v in headers.items())
    if size > MAX_MESSAGE_BYTES:
        raise InvalidTaskError(f"message is {size} bytes, more than {MAX_MESSAGE_BYTES}")
    if "task" in headers:
        name = headers["task"]
    else:
        try:
            name = message.decode().get("task")
        except Exception:  # undecodable, or not a mapping: Celery handles either
            return
    if not isinstance(name, str | None):
        raise InvalidTaskError(f"task name is {_describe(name)}, expected a string")


def check_message(name: str, message: Message, body: Any) -> None:
    """Raise ``InvalidTaskError`` unless ``message`` is a well-formed protocol-2 message for
    task ``name`` (and, for a service's task, a call it accepts). ``body`` is what Celery's
    consumer decoded already: set only for a protocol-1 message."""
    if body is not None:
        raise InvalidTaskError("protocol 1 message (task name in the body): not accepted")
    size = len(message.body or b"")  # the headers' size: check_envelope, in the consumer
    if size > MAX_MESSAGE_BYTES:
        raise InvalidTaskError(f"body is {size} bytes, more than {MAX_MESSAGE_BYTES}")
    _check_headers(message.headers)  # a dict: Celery found the task's name in it
    args, kwargs, embed = _decode_triple(message)
    _check_embed(embed)
    if name.startswith(SERVICE_TASK_PREFIX):
        _check_service_call(args, kwargs)


def _check_headers(headers: dict[str, Any]) -> None:
    task_id = headers.get("id")
    if not isinstance(task_id, str) or not task_id:
        raise InvalidTaskError(f"header 'id' is {_short(task_id)}, expected a task id")
    retries = headers.get("retries", 0)
    if type(retries) is not int or retries < 0:
        raise InvalidTaskError(f"header 'retries' is {_short(retries)}, expected a count")
    limits = headers.get("timelimit") or [None, None]
    if not isinstance(limits, list) or len(limits) != 2 or not all(
            limit is None or (type(limit) in (int, float) and limit >= 0) for limit in limits):
        raise InvalidTaskError(f"header 'timelimit' is {_short(limits)}, expected "
                               "[hard, soft] seconds or nulls")


def _decode_triple(message: Message) -> tuple[list[Any], dict[str, Any], dict[str, Any]]:
    try:
        payload = message.decode()
    except ContentDisallowed:
        raise  # Celery already rejects and logs it as an invalid task
    except Exception as exc:  # any decoder's error: DecodeError, UnicodeError, ...
        raise InvalidTaskError(f"body does not decode as {message.content_type}: "
                               f"{_short(str(exc))}") from None
    if not isinstance(payload, list) or len(payload) != 3:
        hybrid = " (protocol 1 or hybrid)" if isinstance(payload, dict) else ""
        raise InvalidTaskError(f"body is {_describe(payload)}{hybrid}, expected "
                               "[args, kwargs, embed]")
    args, kwargs, embed = payload
    if not isinstance(args, list) or not isinstance(kwargs, dict) \
            or not isinstance(embed, dict | None):
        raise InvalidTaskError(f"body is [{_describe(args)}, {_describe(kwargs)}, "
                               f"{_describe(embed)}], expected [list, dict, dict]")
    return args, kwargs, embed or {}


def _check_embed(embed: dict[str, Any]) -> None:
    for key, expected in _EMBED_TYPES.items():
        value = embed.get(key)
        if value is not None and not isinstance(value, expected):
            raise InvalidTaskError(f"embed {key!r} is {_describe(value)}, "
                                   f"expected {expected.__name__}")


# The year 3000 in epoch milliseconds (services.fields.LATEST_TIME).
MAX_SLOT_MS = int(LATEST_TIME * 1000)
SERVICE_KWARGS = ("kind", "slot", "next_slot", "more_slots")
MAX_MORE_SLOTS = 100  # services.schedule.CATCHUP_ALL_LIMIT


def _check_service_call(args: list[Any], kwargs: dict[str, Any]) -> None:
    if args:
        raise InvalidTaskError(f"a service task takes no positional arguments, got {len(args)}")
    unknown = sorted(str(key) for key in kwargs if key not in SERVICE_KWARGS)
    if unknown:
        raise InvalidTaskError(f"a service task takes only {', '.join(SERVICE_KWARGS)}, "
                               f"got {_short(unknown)}")
    more = kwargs.get("more_slots")
    if more is not None and (not isinstance(more, list) or len(more) > MAX_MORE_SLOTS):
        raise InvalidTaskError(f"more_slots must be a list of at most {MAX_MORE_SLOTS} due "
                               f"times, got {_short(more)}")
    for key, value in [("slot", kwargs.get("slot")), ("next_slot", kwargs.get("next_slot")),
                       *(("more_slots", item) for item in more or [])]:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or not 0 <= value <= MAX_SLOT_MS):
            raise InvalidTaskError(f"{key} must hold due times in epoch milliseconds, "
                                   f"got {_short(value)}")
    kind = kwargs.get("kind", "tick")
    if kind not in REQUESTED_KINDS:
        raise InvalidTaskError(
            f"kind must be one of {', '.join(REQUESTED_KINDS)}, got {_short(kind)}")


def _describe(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _short(value: Any, limit: int = 60) -> str:
    """A repr short enough for a log line: a poison message must not flood the log."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"
