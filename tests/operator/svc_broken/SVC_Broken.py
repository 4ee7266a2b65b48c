"""Fails at import on purpose."""

raise RuntimeError("broken on purpose for the operator tests")
