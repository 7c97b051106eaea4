from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
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
    ACTION_RECONNECT: _ClassVar[Action]
    ACTION_EVALUATE: _ClassVar[Action]
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
ACTION_RECONNECT: Action
ACTION_EVALUATE: Action

class WireOptions(_message.Message):
    __slots__ = ("dtype", "codec", "level", "filter", "update", "framing")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    UPDATE_FIELD_NUMBER: _ClassVar[int]
    FRAMING_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    codec: str
    level: int
    filter: str
    update: str
    framing: str
    def __init__(self, dtype: _Optional[str] = ..., codec: _Optional[str] = ..., level: _Optional[int] = ..., filter: _Optional[str] = ..., update: _Optional[str] = ..., framing: _Optional[str] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("transport", "address")
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    transport: str
    address: str
    def __init__(self, transport: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("name", "num_samples", "client_id", "tags")
    NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    num_samples: int
    client_id: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., num_samples: _Optional[int] = ..., client_id: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class Registration(_message.Message):
    __slots__ = ("client_id", "token", "round", "wire", "endpoints")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    WIRE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    token: str
    round: int
    wire: WireOptions
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    def __init__(self, client_id: _Optional[str] = ..., token: _Optional[str] = ..., round: _Optional[int] = ..., wire: _Optional[_Union[WireOptions, _Mapping]] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ...) -> None: ...

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

class UpdateReceipt(_message.Message):
    __slots__ = ("round", "received_bytes")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    round: int
    received_bytes: int
    def __init__(self, round: _Optional[int] = ..., received_bytes: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("action", "round", "config_json", "wire", "switch_to", "reason")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    WIRE_FIELD_NUMBER: _ClassVar[int]
    SWITCH_TO_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    action: Action
    round: int
    config_json: str
    wire: WireOptions
    switch_to: Endpoint
    reason: str
    def __init__(self, action: _Optional[_Union[Action, str]] = ..., round: _Optional[int] = ..., config_json: _Optional[str] = ..., wire: _Optional[_Union[WireOptions, _Mapping]] = ..., switch_to: _Optional[_Union[Endpoint, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class EvaluationRequest(_message.Message):
    __slots__ = ("client_id", "round", "num_examples", "loss", "metrics")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    round: int
    num_examples: int
    loss: float
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, client_id: _Optional[str] = ..., round: _Optional[int] = ..., num_examples: _Optional[int] = ..., loss: _Optional[float] = ..., metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class EvaluationReceipt(_message.Message):
    __slots__ = ("round", "accepted")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    round: int
    accepted: bool
    def __init__(self, round: _Optional[int] = ..., accepted: _Optional[bool] = ...) -> None: ...

class DisconnectRequest(_message.Message):
    __slots__ = ("client_id",)
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    def __init__(self, client_id: _Optional[str] = ...) -> None: ...

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

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Status(_message.Message):
    __slots__ = ("round", "current_round", "round_open", "autorun", "autorun_target", "rounds_left", "num_clients", "min_clients", "ready", "accuracy", "loss", "last_updated", "finished", "selected", "selected_clients", "clock", "submitted", "payload_bytes", "wire", "strategy", "stopping", "endpoints")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    CURRENT_ROUND_FIELD_NUMBER: _ClassVar[int]
    ROUND_OPEN_FIELD_NUMBER: _ClassVar[int]
    AUTORUN_FIELD_NUMBER: _ClassVar[int]
    AUTORUN_TARGET_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_LEFT_FIELD_NUMBER: _ClassVar[int]
    NUM_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    MIN_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LAST_UPDATED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    SELECTED_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    CLOCK_FIELD_NUMBER: _ClassVar[int]
    SUBMITTED_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_BYTES_FIELD_NUMBER: _ClassVar[int]
    WIRE_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    STOPPING_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    round: int
    current_round: int
    round_open: bool
    autorun: bool
    autorun_target: int
    rounds_left: int
    num_clients: int
    min_clients: int
    ready: int
    accuracy: float
    loss: float
    last_updated: float
    finished: bool
    selected: int
    selected_clients: _containers.RepeatedScalarFieldContainer[str]
    clock: float
    submitted: int
    payload_bytes: int
    wire: WireOptions
    strategy: str
    stopping: bool
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    def __init__(self, round: _Optional[int] = ..., current_round: _Optional[int] = ..., round_open: _Optional[bool] = ..., autorun: _Optional[bool] = ..., autorun_target: _Optional[int] = ..., rounds_left: _Optional[int] = ..., num_clients: _Optional[int] = ..., min_clients: _Optional[int] = ..., ready: _Optional[int] = ..., accuracy: _Optional[float] = ..., loss: _Optional[float] = ..., last_updated: _Optional[float] = ..., finished: _Optional[bool] = ..., selected: _Optional[int] = ..., selected_clients: _Optional[_Iterable[str]] = ..., clock: _Optional[float] = ..., submitted: _Optional[int] = ..., payload_bytes: _Optional[int] = ..., wire: _Optional[_Union[WireOptions, _Mapping]] = ..., strategy: _Optional[str] = ..., stopping: _Optional[bool] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ...) -> None: ...

class ControlResult(_message.Message):
    __slots__ = ("operation", "status", "round", "autorun_target", "client_id", "transport")
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    AUTORUN_TARGET_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    operation: str
    status: Status
    round: int
    autorun_target: int
    client_id: str
    transport: str
    def __init__(self, operation: _Optional[str] = ..., status: _Optional[_Union[Status, _Mapping]] = ..., round: _Optional[int] = ..., autorun_target: _Optional[int] = ..., client_id: _Optional[str] = ..., transport: _Optional[str] = ...) -> None: ...

class ClientsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClientInfo(_message.Message):
    __slots__ = ("client_id", "name", "transport", "state", "num_samples", "joined_at", "last_seen", "rounds", "wanted_transport", "tags")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    JOINED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    WANTED_TRANSPORT_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    name: str
    transport: str
    state: ClientState
    num_samples: int
    joined_at: float
    last_seen: float
    rounds: _containers.RepeatedScalarFieldContainer[int]
    wanted_transport: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, client_id: _Optional[str] = ..., name: _Optional[str] = ..., transport: _Optional[str] = ..., state: _Optional[_Union[ClientState, str]] = ..., num_samples: _Optional[int] = ..., joined_at: _Optional[float] = ..., last_seen: _Optional[float] = ..., rounds: _Optional[_Iterable[int]] = ..., wanted_transport: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class ClientsReply(_message.Message):
    __slots__ = ("clients",)
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    clients: _containers.RepeatedCompositeFieldContainer[ClientInfo]
    def __init__(self, clients: _Optional[_Iterable[_Union[ClientInfo, _Mapping]]] = ...) -> None: ...

class Refusal(_message.Message):
    __slots__ = ("client", "reason")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    client: str
    reason: str
    def __init__(self, client: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class Metrics(_message.Message):
    __slots__ = ("values",)
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.ScalarMap[str, float]
    def __init__(self, values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class RoundRecord(_message.Message):
    __slots__ = ("round", "participants", "num_participants", "selected", "dropped", "stragglers", "accuracy", "loss", "client_metrics", "bytes_in", "bytes_out", "duration_s", "finished_at", "train_config_json", "refused", "clipped_samples", "strategy_metrics", "aggregation_error", "selected_clients", "fit_metrics", "federated_loss", "federated_metrics", "evaluated")
    class ClientMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: Metrics
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Metrics, _Mapping]] = ...) -> None: ...
    class StrategyMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class FitMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class FederatedMetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    NUM_PARTICIPANTS_FIELD_NUMBER: _ClassVar[int]
    SELECTED_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    STRAGGLERS_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    CLIENT_METRICS_FIELD_NUMBER: _ClassVar[int]
    BYTES_IN_FIELD_NUMBER: _ClassVar[int]
    BYTES_OUT_FIELD_NUMBER: _ClassVar[int]
    DURATION_S_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    TRAIN_CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    REFUSED_FIELD_NUMBER: _ClassVar[int]
    CLIPPED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_METRICS_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_ERROR_FIELD_NUMBER: _ClassVar[int]
    SELECTED_CLIENTS_FIELD_NUMBER: _ClassVar[int]
    FIT_METRICS_FIELD_NUMBER: _ClassVar[int]
    FEDERATED_LOSS_FIELD_NUMBER: _ClassVar[int]
    FEDERATED_METRICS_FIELD_NUMBER: _ClassVar[int]
    EVALUATED_FIELD_NUMBER: _ClassVar[int]
    round: int
    participants: _containers.RepeatedScalarFieldContainer[str]
    num_participants: int
    selected: int
    dropped: _containers.RepeatedScalarFieldContainer[str]
    stragglers: _containers.RepeatedScalarFieldContainer[str]
    accuracy: float
    loss: float
    client_metrics: _containers.MessageMap[str, Metrics]
    bytes_in: int
    bytes_out: int
    duration_s: float
    finished_at: float
    train_config_json: str
    refused: _containers.RepeatedCompositeFieldContainer[Refusal]
    clipped_samples: _containers.RepeatedScalarFieldContainer[str]
    strategy_metrics: _containers.ScalarMap[str, float]
    aggregation_error: str
    selected_clients: _containers.RepeatedScalarFieldContainer[str]
    fit_metrics: _containers.ScalarMap[str, float]
    federated_loss: float
    federated_metrics: _containers.ScalarMap[str, float]
    evaluated: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, round: _Optional[int] = ..., participants: _Optional[_Iterable[str]] = ..., num_participants: _Optional[int] = ..., selected: _Optional[int] = ..., dropped: _Optional[_Iterable[str]] = ..., stragglers: _Optional[_Iterable[str]] = ..., accuracy: _Optional[float] = ..., loss: _Optional[float] = ..., client_metrics: _Optional[_Mapping[str, Metrics]] = ..., bytes_in: _Optional[int] = ..., bytes_out: _Optional[int] = ..., duration_s: _Optional[float] = ..., finished_at: _Optional[float] = ..., train_config_json: _Optional[str] = ..., refused: _Optional[_Iterable[_Union[Refusal, _Mapping]]] = ..., clipped_samples: _Optional[_Iterable[str]] = ..., strategy_metrics: _Optional[_Mapping[str, float]] = ..., aggregation_error: _Optional[str] = ..., selected_clients: _Optional[_Iterable[str]] = ..., fit_metrics: _Optional[_Mapping[str, float]] = ..., federated_loss: _Optional[float] = ..., federated_metrics: _Optional[_Mapping[str, float]] = ..., evaluated: _Optional[_Iterable[str]] = ...) -> None: ...

class HistoryRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HistoryReply(_message.Message):
    __slots__ = ("rounds",)
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    rounds: _containers.RepeatedCompositeFieldContainer[RoundRecord]
    def __init__(self, rounds: _Optional[_Iterable[_Union[RoundRecord, _Mapping]]] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Health(_message.Message):
    __slots__ = ("ready", "round", "version", "serving", "expected")
    READY_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    round: int
    version: str
    serving: _containers.RepeatedScalarFieldContainer[str]
    expected: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, ready: _Optional[bool] = ..., round: _Optional[int] = ..., version: _Optional[str] = ..., serving: _Optional[_Iterable[str]] = ..., expected: _Optional[_Iterable[str]] = ...) -> None: ...

class SplitOpen(_message.Message):
    __slots__ = ("client_id", "round")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    round: int
    def __init__(self, client_id: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class SplitData(_message.Message):
    __slots__ = ("seq", "payload")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    seq: int
    payload: bytes
    def __init__(self, seq: _Optional[int] = ..., payload: _Optional[bytes] = ...) -> None: ...

class SplitFrame(_message.Message):
    __slots__ = ("open", "data")
    OPEN_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    open: SplitOpen
    data: SplitData
    def __init__(self, open: _Optional[_Union[SplitOpen, _Mapping]] = ..., data: _Optional[_Union[SplitData, _Mapping]] = ...) -> None: ...

class SplitReply(_message.Message):
    __slots__ = ("seq", "payload", "error_kind", "error")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ERROR_KIND_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    seq: int
    payload: bytes
    error_kind: str
    error: str
    def __init__(self, seq: _Optional[int] = ..., payload: _Optional[bytes] = ..., error_kind: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class SecAggRequest(_message.Message):
    __slots__ = ("client_id", "round", "stage", "body", "wait_s")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    STAGE_FIELD_NUMBER: _ClassVar[int]
    BODY_FIELD_NUMBER: _ClassVar[int]
    WAIT_S_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    round: int
    stage: str
    body: bytes
    wait_s: float
    def __init__(self, client_id: _Optional[str] = ..., round: _Optional[int] = ..., stage: _Optional[str] = ..., body: _Optional[bytes] = ..., wait_s: _Optional[float] = ...) -> None: ...

class SecAggReply(_message.Message):
    __slots__ = ("body",)
    BODY_FIELD_NUMBER: _ClassVar[int]
    body: bytes
    def __init__(self, body: _Optional[bytes] = ...) -> None: ...
