"""The API's routes, one module each; ``create_app`` includes every module's ``router``.

To add routes (a webhook receiver, /v1/checkpoint): write ``routes/<name>.py`` with a
FastAPI ``router = APIRouter()``, guard each route with ``Depends(require(scope))``
(flagtrail.api.auth; add the scope to flagtrail.api.tokens.SCOPES), raise
``Problem`` for errors, and add ``"<name>"`` to ROUTE_MODULES.
"""

from __future__ import annotations

ROUTE_MODULES: tuple[str, ...] = ("health", "export", "package", "head", "metrics", "sources")
