"""Paging of list answers: ``offset`` and ``limit`` query parameters, and the page they give."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel

MAX_LIMIT = 200
Item = TypeVar("Item")


@dataclass(frozen=True)
class Paging:
    offset: int
    limit: int


def paging(offset: int = Query(0, ge=0, description="items to skip, newest first"),
           limit: int = Query(50, ge=1, le=MAX_LIMIT, description=f"items in the page (1-{MAX_LIMIT})")) -> Paging:
    """The page asked for (FastAPI answers 400 naming the parameter when out of range)."""
    return Paging(offset, limit)


class Page(BaseModel, Generic[Item]):
    """One page of a list: ``total`` matches in all, ``items`` from ``offset``."""

    total: int
    offset: int
    limit: int
    items: list[Item]
