"""Notifications: telling a RIS, a worklist or a web service that a result is ready (``[[notifications]]``).

``events`` turns a finished job or a final study into one JSON-ready event,
``service`` queues events in the ledger and sends them with retry, and each
kind (``webhook``, ``hl7``) is a notifier registered through the
``scanstream_register_notifiers`` hook (built-ins in ``builtin``).
"""
