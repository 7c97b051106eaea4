from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClientState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLIENT_STATE_UNSPECIFIED: _ClassVar[ClientState]
    CLIENT_STATE_JOIN: _ClassVar[ClientState]
    CLIENT_STATE_READY: _ClassVar[ClientState]
    CLIENT_STATE_TRAINING: _ClassVar[ClientState]
    CLIENT_STATE_UPDATE: _ClassVar[ClientState]
    CLIENT_STATE_FINISH: _ClassVar[ClientState]
    CLIENT_STATE_LEFT: _ClassVar[ClientState]

class Action(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTION_UNSPECIFIED: _ClassVar[Action]
    ACTION_WAIT: _ClassVar[Action]
    ACTION_TRAIN: _ClassVar[Action]
    ACTION_STOP: _ClassVar[Action]
CLIENT_STATE_UNSPECIFIED: ClientState
CLIENT_STATE_JOIN: ClientState
CLIENT_STATE_READY: ClientState
CLIENT_STATE_TRAINING: ClientState
CLIENT_STATE_UPDATE: ClientState
CLIENT_STATE_FINISH: ClientState
CLIENT_STATE_LEFT: ClientState
ACTION_UNSPECIFIED: Action
ACTION_WAIT: Action
ACTION_TRAIN: Action
ACTION_STOP: Action

class RegisterRequest(_message.Message):
    __slots__ = ("name", "num_samples", "client_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    num_samples: int
    client_id: str
    def __init__(self, name: _Optional[str] = ..., num_samples: _Optional[int] = ..., client_id: _Optional[str] = ...) -> None: ...

class RegisterReply(_message.Message):
    __slots__ = ("client_id", "token", "round")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    token: str
    round: int
    def __init__(self, client_id: _Optional[str] = ..., token: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class GetGlobalRequest(_message.Message):
    __slots__ = ("client_id",)
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    def __init__(self, client_id: _Optional[str] = ...) -> None: ...

class GlobalInfo(_message.Message):
    __slots__ = ("round", "total_bytes")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    round: int
    total_bytes: int
    def __init__(self, round: _Optional[int] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class GlobalChunk(_message.Message):
    __slots__ = ("info", "data")
    INFO_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    info: GlobalInfo
    data: bytes
    def __init__(self, info: _Optional[_Union[GlobalInfo, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UpdateInfo(_message.Message):
    __slots__ = ("client_id", "round", "num_samples", "total_bytes", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    round: int
    num_samples: int
    total_bytes: int
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, client_id: _Optional[str] = ..., round: _Optional[int] = ..., num_samples: _Optional[int] = ..., total_bytes: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class UpdateChunk(_message.Message):
    __slots__ = ("info", "data")
    INFO_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    info: UpdateInfo
    data: bytes
    def __init__(self, info: _Optional[_Union[UpdateInfo, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class PushUpdateReply(_message.Message):
    __slots__ = ("received_bytes",)
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    received_bytes: int
    def __init__(self, received_bytes: _Optional[int] = ...) -> None: ...

class SignalRequest(_message.Message):
    __slots__ = ("client_id", "state", "wait_s")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    state: ClientState
    wait_s: float
    def __init__(self, client_id: _Optional[str] = ..., state: _Optional[_Union[ClientState, str]] = ..., wait_s: _Optional[float] = ...) -> None: ...

class Instruction(_message.Message):
    __slots__ = ("action", "round", "config_json")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    action: Action
    round: int
    config_json: str
    def __init__(self, action: _Optional[_Union[Action, str]] = ..., round: _Optional[int] = ..., config_json: _Optional[str] = ...) -> None: ...

class DisconnectRequest(_message.Message):
    __slots__ = ("client_id",)
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    def __init__(self, client_id: _Optional[str] = ...) -> None: ...

class DisconnectReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StartAutorunRequest(_message.Message):
    __slots__ = ("rounds",)
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    rounds: int
    def __init__(self, rounds: _Optional[int] = ...) -> None: ...

class StopAutorunRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RequestTransportRequest(_message.Message):
    __slots__ = ("client_id", "transport")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    transport: str
    def __init__(self, client_id: _Optional[str] = ..., transport: _Optional[str] = ...) -> None: ...

class ControlReply(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class JsonReply(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...
