"""REST transport: FastAPI app + uvicorn server, httpx client, the REST paper's URIs."""
from fedcore.transport import TransportSpec

from transports.rest.client import RestClientTransport
from transports.rest.server import RestServerTransport, create_app

TRANSPORT = TransportSpec("rest", RestClientTransport, RestServerTransport)

__all__ = ["TRANSPORT", "RestClientTransport", "RestServerTransport", "create_app"]
