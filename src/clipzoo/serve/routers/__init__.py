"""The service's routes, one APIRouter per concern; ``create_app`` includes :data:`ROUTERS` in this order."""
from __future__ import annotations

from . import admin, caption, classify, clip_retrieval, embed, items, search, service, video

ROUTERS = (service.router, search.router, classify.router, embed.router, items.router, clip_retrieval.router,
           items.writes, admin.router, caption.router, video.router)

__all__ = ["ROUTERS"]
