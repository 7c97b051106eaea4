"""Split training (device front ↔ edge rest), transport-independent: see docs/split-training.md."""
from __future__ import annotations

from fedcore.split.channel import Link, LocalChannel, SplitChannel
from fedcore.split.cut import SplitModel, SplitShapes, cut, cut_points, probe_shapes
from fedcore.split.device import DeviceConfig, DeviceTrainer, EpochResult, StepResult, TrainResult
from fedcore.split.edge import EdgeConfig, EdgeTrainer, sgd
from fedcore.split.messages import Expect, MicroMeta, SplitMessage, decode_message, encode_message
from fedcore.split.rounds import SplitRoundConfig, Traffic, split_round_config

__all__ = [
    "DeviceConfig", "DeviceTrainer", "EdgeConfig", "EdgeTrainer", "EpochResult", "Expect", "Link",
    "LocalChannel", "MicroMeta", "SplitChannel", "SplitMessage", "SplitModel", "SplitShapes",
    "SplitRoundConfig", "StepResult", "Traffic", "TrainResult", "cut", "cut_points", "decode_message", "encode_message",
    "probe_shapes", "sgd", "split_round_config",
]
