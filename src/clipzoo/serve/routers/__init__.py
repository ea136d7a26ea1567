"""The service's routes, one APIRouter per concern; ``create_app`` includes :data:`ROUTERS` in this order."""
from __future__ import annotations

from . import classify, embed, items, search, service

ROUTERS = (service.router, search.router, classify.router, embed.router, items.router)

__all__ = ["ROUTERS"]
