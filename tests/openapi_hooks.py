"""schemathesis hooks (SCHEMATHESIS_HOOKS=tests.openapi_hooks): a generator for the schema's
``printable`` string format (fedcore names and tags: ``str.isprintable``)."""
from __future__ import annotations

import schemathesis
from hypothesis import strategies as st

from transports.rest.schemas import PRINTABLE_FORMAT

PRINTABLE_CHARS = st.characters(categories=["L", "M", "N", "P", "S"], include_characters=" ")

schemathesis.openapi.format(PRINTABLE_FORMAT, st.text(PRINTABLE_CHARS, min_size=1, max_size=32))
