"""Client states of the REST paper (join → ready → training → update → finish) plus left."""
from __future__ import annotations

from enum import Enum


class ClientState(str, Enum):
    JOIN = "join"
    READY = "ready"
    TRAINING = "training"
    UPDATE = "update"
    FINISH = "finish"
    LEFT = "left"


class Action(str, Enum):
    """What the server tells a client in answer to its signal."""

    WAIT = "wait"
    TRAIN = "train"
    STOP = "stop"
    EVALUATE = "evaluate"  # score the global model of ``round`` on the local validation split
    RECONNECT = "reconnect"  # the server is stopping: wait, then reconnect with the same id and token
