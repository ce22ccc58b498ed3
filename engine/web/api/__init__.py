"""The JSON API under ``/api``: one router per resource, every route behind a signed-in user (OpenAPI at /api/docs)."""
