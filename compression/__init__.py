"""fedcore's compression package: lossless codec registry, float-aware filters,
and int8 quantised update codecs.

``fedcore.wire`` uses it as: cast → :func:`get_filter` (``default_filter``)
→ :func:`get_codec` ``.compress`` on the way out, and the reverse on the way in,
always with a ``max_size`` bound. ``python -m experiments.compression_bench`` reproduces
the REST paper's Tables 7-8 and measures our pipeline beside them.
"""

from __future__ import annotations

from .codecs import Codec
from .errors import (
    CompressionError,
    CorruptDataError,
    DecompressionLimitError,
    UnknownCodecError,
)
from .filters import (
    DTYPES,
    Filter,
    available_filters,
    default_filter,
    get_filter,
    register_filter,
)
from .quant import dequantize_per_channel, quantize_per_channel
from .registry import available_codecs, get_codec, register_codec

__all__ = [
    "CompressionError",
    "UnknownCodecError",
    "CorruptDataError",
    "DecompressionLimitError",
    "Codec",
    "get_codec",
    "available_codecs",
    "register_codec",
    "Filter",
    "get_filter",
    "available_filters",
    "register_filter",
    "default_filter",
    "DTYPES",
    "quantize_per_channel",
    "dequantize_per_channel",
]
