"""REST transport: FastAPI app + uvicorn server, httpx client, the REST paper's URIs.

Importing it loads only the httpx client: FastAPI and uvicorn load when the server half is first
used, so client processes start faster.
"""
from fedcore.transport import TransportSpec

from transports.rest.client import RestClientTransport

TRANSPORT = TransportSpec("rest", RestClientTransport, "transports.rest.server:RestServerTransport")

__all__ = ["TRANSPORT", "RestClientTransport"]
