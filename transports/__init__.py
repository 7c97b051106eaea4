"""Transport adapters for fedcore: each subpackage exports ``TRANSPORT`` (a TransportSpec)."""
