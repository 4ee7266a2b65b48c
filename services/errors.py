"""Every error the framework raises on purpose, so callers can catch them by kind."""


class ServiceError(Exception):
    """Base class for the framework's own errors."""


class ServiceConfigError(ServiceError):
    """A service's definition or settings are invalid; the message names the service and field."""


class UnknownServiceError(ServiceError, KeyError):
    """No registered service has the given name."""

    def __init__(self, name: str, known: list[str], suggestions: list[str]) -> None:
        self.name = name
        self.known = known
        self.suggestions = suggestions
        hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else "."
        listing = ", ".join(known) if known else "(none registered)"
        super().__init__(f"unknown service {name!r}{hint} Known services: {listing}")

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class StateUnavailableError(ServiceError):
    """Redis, which holds every service's state, cannot be reached."""


class StateCorruptError(ServiceError):
    """A state key holds a value of the wrong Redis type; nothing runs until it is fixed."""


class DatabaseConfigError(ServiceError):
    """DATABASE_URL is malformed, names a missing driver, or cannot connect."""


class SchemaNotMigrated(DatabaseConfigError):
    """A table the framework needs does not exist yet: the migrations have not been run."""


class RowLockTimeout(ServiceError):
    """A row lock could not be taken (NOWAIT, or the lock timeout passed). ``table`` and
    ``key`` name the row; the transaction is still usable (PostgreSQL rolls back to a
    savepoint), so the caller may try again or give up."""

    def __init__(self, message: str, table: str = "", key: object = None) -> None:
        super().__init__(message)
        self.table = table
        self.key = key


class ServiceRunFailed(ServiceError):
    """A run's ``update()`` raised; the task fails with this so Flower shows the run as failed."""


class RunTimedOut(ServiceError):
    """A run passed its ``timeout_seconds`` (soft limit: ``update()`` was cancelled) or its
    hard limit (``update()`` never yielded); recorded with outcome ``timeout``."""
