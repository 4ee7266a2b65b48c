"""Periodic services: the seed's AbstractService, with its state shared through Redis.

Users write ``SVC_*.py`` files in this package (or in packages named by ``SVC_PACKAGES``)
against :class:`services.AbstractService.AbstractService`.
"""

SYSTEM_ID = "system"
"""The requester id services act under unless they are given another."""

__all__ = ["SYSTEM_ID"]
