"""The HTTP service: search, generation (whole or streamed), telemetry, metrics and a live dashboard.

`DualPathService` is the service without HTTP (what the routes call, in worker threads);
`create_app(service)` wraps it in a FastAPI app. `dualpath serve` runs that app with uvicorn.
"""

from dualpath.service.app import create_app
from dualpath.service.core import DualPathService, InputError
from dualpath.service.guards import check_bind, is_loopback
from dualpath.service.metrics import ServiceMetrics
from dualpath.service.schemas import GenerateRequest, SearchRequest

__all__ = [
    "DualPathService",
    "GenerateRequest",
    "InputError",
    "SearchRequest",
    "ServiceMetrics",
    "check_bind",
    "create_app",
    "is_loopback",
]
