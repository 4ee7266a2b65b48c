"""Example services built on the database toolkit, discovered like any ``services/SVC_*.py``:
the outbox dispatcher and the expired-rows cleanup, each with its own settings class."""
