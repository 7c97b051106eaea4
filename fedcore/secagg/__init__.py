"""Secure aggregation (SecAgg / SecAgg+): the server learns only the sum of the clients' updates.

See :mod:`fedcore.secagg.protocol` for the rounds and the README section "Secure aggregation"
for the threat model, parameters and cost.
"""
from fedcore.secagg.crypto import ShareDecryptionError
from fedcore.secagg.params import SecAggError, SecAggParams, dequantize_mean, neighbours, quantize
from fedcore.secagg.protocol import (
    Aggregate,
    AdvertiseKeys,
    KeyBook,
    MaskedInput,
    RoundContext,
    SecAggClient,
    SecAggServer,
    ShareInbox,
    ShareKeys,
    Survivors,
    UnmaskShares,
)

from fedcore.secagg.strategy import SecAggFedAvg
from fedcore.strategy import register_strategy

register_strategy("secagg", SecAggFedAvg)

__all__ = [
    "AdvertiseKeys", "Aggregate", "KeyBook", "MaskedInput", "RoundContext", "SecAggClient", "SecAggError",
    "SecAggFedAvg", "SecAggParams", "SecAggServer", "ShareDecryptionError", "ShareInbox", "ShareKeys", "Survivors", "UnmaskShares",
    "dequantize_mean", "neighbours", "quantize",
]
