"""The database toolkit, for services that write SQL: sessions (``sessions``, behind
``AbstractService.db``), row locking (``locking``), the models and migrations of the tables
the framework ships (``models``, ``migrate``, ``migrations``) and the transactional outbox
(``outbox``). SQLAlchemy loads only in processes that use it. See docs/database.md."""
