"""One settings object for server, client and demo: TOML file < environment (FEDCORE_*) < CLI flags."""
from __future__ import annotations

import json
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, StrictBool, StrictInt, StrictStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from fedcore import constants as C
from fedcore.errors import ConfigError

_TOML_PATH: ContextVar[Path | None] = ContextVar("fedcore_toml_path", default=None)


class Settings(BaseSettings):
    """Every knob of fedcore. ``transport`` is the config flag that picks gRPC or REST."""

    model_config = SettingsConfigDict(env_prefix="FEDCORE_", extra="forbid", validate_assignment=True)

    # transport and addresses
    transport: str = Field("rest", description="client: rest | grpc; server: one or both, e.g. 'rest,grpc'")
    host: str = Field(C.DEFAULT_HOST, description="address to bind (server) or connect to (client)")
    advertise_host: str | None = Field(
        None, description="server: the host clients are told to use for each transport (default: host)"
    )
    rest_port: int = Field(C.DEFAULT_REST_PORT, ge=0, le=65535)
    grpc_port: int = Field(C.DEFAULT_GRPC_PORT, ge=0, le=65535)
    tls_cert: Path | None = Field(None, description="server certificate (PEM); enables TLS")
    tls_key: Path | None = Field(None, description="server private key (PEM)")
    tls_ca: Path | None = Field(None, description="CA bundle a client verifies the server with")
    admin_token: str | None = Field(None, description="token needed for round control (autorun, step, kick)")

    # rounds
    rounds: int = Field(5, ge=1, description="rounds to run on autorun")
    min_clients: int = Field(2, ge=1)
    round_deadline_s: float = Field(C.DEFAULT_ROUND_DEADLINE_S, gt=0)
    client_timeout_s: float = Field(C.DEFAULT_CLIENT_TIMEOUT_S, gt=0)
    heartbeat_s: float = Field(C.DEFAULT_HEARTBEAT_S, gt=0)
    checkpoint_dir: Path | None = Field(None, description="save global model + history each round; resume from it")
    max_payload_bytes: int = Field(C.DEFAULT_MAX_PAYLOAD_BYTES, gt=0)
    body_timeout_s: float = Field(C.DEFAULT_BODY_TIMEOUT_S, gt=0, description="an update body must arrive within this")
    max_update_norm: float | None = Field(
        C.DEFAULT_MAX_UPDATE_NORM, gt=0, description="refuse updates farther than this x (|global| + 1) from the global"
    )
    max_num_samples: int = Field(C.DEFAULT_MAX_NUM_SAMPLES, ge=1, description="sample counts are clipped to this")

    # client sampling and federated evaluation (fedcore.selection)
    fraction_fit: float = Field(1.0, gt=0, le=1, description="share of the ready clients that train each round")
    min_fit_clients: int = Field(1, ge=1, description="train with at least this many (of those ready)")
    max_fit_clients: int | None = Field(None, ge=1, description="train with at most this many")
    fraction_evaluate: float = Field(0.0, ge=0, le=1, description="share of the idle clients that evaluate each new global model (0: off)")
    min_evaluate_clients: int = Field(1, ge=1, description="skip federated evaluation with fewer clients than this")
    max_evaluate_clients: int | None = Field(None, ge=1, description="evaluate with at most this many")
    evaluate_deadline_s: float = Field(60.0, gt=0, description="the next round waits at most this for evaluations")
    selector: str = Field("uniform", description="client selector: uniform (seeded with seed) or a registered name")

    # wire format ("model lightweighting")
    dtype: Literal["fp32", "bf16", "fp16", "float32", "bfloat16", "float16"] = "bf16"
    codec: str = C.DEFAULT_CODEC
    level: int | None = C.DEFAULT_LEVEL
    filter: str = C.DEFAULT_FILTER
    quantize_update: bool = Field(False, description="clients send int8-quantised updates instead of weights")
    framing: Literal["whole", "blocks"] = Field(
        "whole", description="blocks: payloads are cut into 1 MiB blocks, coded while they are sent and received"
    )

    # split training (the WASM paper's device/edge system): see docs/split-training.md
    mode: Literal["fedavg", "split"] = Field("fedavg", description="fedavg | split (devices train the front, the edge the rest)")
    split_at: str | None = Field(None, description="split: cut the model after this named layer (e.g. blocks.1)")
    split_head_at: str | None = Field(None, description="split: U-shaped, the head from this layer stays on the device")
    micro_batches: int = Field(4, ge=1, description="split: micro-batches per mini-batch (GPipe)")
    split_window: int = Field(4, ge=1, description="split: micro-batches in flight per device (1 = no overlap)")
    split_dtype: Literal["fp32", "bf16"] = Field("fp32", description="split: activations/gradients on the wire")
    edge_per_device: bool = Field(False, description="split: one edge model per device instead of one shared")
    device_softmax_ext: bool = Field(False, description="split: device attention softmax via cuda_ext")
    edge_matmul_ext: bool = Field(False, description="split: edge projections/MLP via cuda_ext")
    unified_memory: bool = Field(False, description="split: edge activation buffers in CUDA unified memory (GPU)")

    # learning
    strategy: str = Field(
        "fedavg", description="fedavg | fedprox | fedavgm | fedadam | fedadagrad | fedyogi | fedmedian | "
        "fedtrimmedavg | krum | multikrum | bulyan | secagg | dp-<name> | any registered strategy",
    )
    strategy_options: dict[str, StrictBool | StrictInt | float | StrictStr] = Field(
        default_factory=dict,
        description="the strategy's own parameters, e.g. {f = 1, m = 3} for krum or {rounding = \"nearest\"} for "
        "secagg (TOML table [strategy_options])",
    )
    proximal_mu: float = Field(0.01, ge=0, description="FedProx mu")
    server_lr: float | None = Field(
        None, gt=0, description="server learning rate of fedavgm/fedadam/fedadagrad/fedyogi (unset: the strategy's default)"
    )
    dataset: Literal["digits", "cifar10"] = "digits"
    data_dir: Path | None = Field(None, description="CIFAR-10 folder (npz files or torchvision layout)")
    partition: Literal["iid", "dirichlet"] = "iid"
    alpha: float = Field(0.5, gt=0, description="Dirichlet concentration for non-IID partitions")
    num_partitions: int = Field(3, ge=1, description="how many clients the data set is split among")
    model: str = Field("auto", description="auto | digits_mlp | digits_cnn | cifar_cnn | resnet18")
    local_epochs: int = Field(2, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(0.05, gt=0)
    seed: int = 0

    # differential privacy (fedcore/privacy): central with strategy dp-fedavg | dp-fedprox | dp-fedadam
    dp_clip_norm: float = Field(1.0, gt=0, description="central DP: clip each update (whole-model L2) to this")
    dp_noise_multiplier: float = Field(1.0, ge=0, description="central DP: noise std on the mean = this x clip / clients")
    dp_target_epsilon: float | None = Field(None, gt=0, description="central DP: pick the noise for this epsilon after `rounds`")
    dp_delta: float = Field(1e-5, gt=0, lt=1, description="delta of the reported (epsilon, delta)")
    dp_adaptive_clip: bool = Field(False, description="central DP: the clip norm tracks a quantile of update norms")
    dp_target_quantile: float = Field(0.5, gt=0, lt=1, description="adaptive clipping: target quantile")
    dp_clip_lr: float = Field(0.2, gt=0, description="adaptive clipping: geometric step size")
    dp_population: int | None = Field(None, ge=1, description="all clients (sampling rate = clients per round / this)")
    dp_seed: int | None = Field(None, description="seed of DP noise, for reproducible experiments (unset: OS randomness)")
    local_dp_clip: float | None = Field(None, gt=0, description="local DP: clients clip their update to this (unset: off)")
    local_dp_noise: float = Field(1.0, ge=0, description="local DP: noise std = this x local_dp_clip per coordinate")

    @field_validator("transport")
    @classmethod
    def _transports(cls, v: str) -> str:
        from fedcore.transport import available_transports

        names = [t.strip() for t in v.split(",") if t.strip()]
        known = available_transports()
        if not names:
            raise ValueError(f"transport must name at least one of {', '.join(known)}")
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown transport {unknown[0]!r}; available: {', '.join(known)}")
        return ",".join(names)

    @field_validator("strategy_options", mode="before")
    @classmethod
    def _options_json(cls, v: Any) -> Any:
        """``--set 'strategy_options={"f": 1}'`` arrives as text: read it as JSON."""
        if isinstance(v, str):
            try:
                return json.loads(v) if v.strip() else {}
            except json.JSONDecodeError as exc:
                raise ValueError(f'strategy_options must be a JSON object such as {{"f": 1}}: {exc}') from None
        return v

    @model_validator(mode="after")
    def _strategy_fits(self) -> Settings:
        """A registered strategy is built once here so a wrong option, an impossible parameter or a
        min_clients too small for a robust strategy fails at load time (names registered later
        are checked when the federation is built)."""
        from fedcore.strategy import is_registered, strategy_from_settings

        if not is_registered(self.strategy):
            return self
        need = strategy_from_settings(self).min_updates
        if self.min_clients < need:
            raise ValueError(f"strategy {self.strategy!r} needs at least {need} updates a round, but min_clients is "
                             f"{self.min_clients}: set min_clients >= {need} (or change its options)")
        return self

    @property
    def transports(self) -> list[str]:
        return self.transport.split(",")

    @property
    def advertised_host(self) -> str:
        """The host name clients use: advertise_host, or host unless it is a wildcard address."""
        if self.advertise_host:
            return self.advertise_host
        return "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host

    @property
    def rest_url(self) -> str:
        scheme = "https" if self.tls_cert or self.tls_ca else "http"
        return f"{scheme}://{self.host}:{self.rest_port}"

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    def address_for(self, transport: str) -> str:
        """Where a client first looks for ``transport`` (afterwards the server's announced endpoints win)."""
        if transport == "rest":
            return self.rest_url
        if transport == "grpc":
            return self.grpc_address
        return f"{transport}://{self.host}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = _TOML_PATH.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @classmethod
    def load(cls, config_file: str | Path | None = None, **overrides: Any) -> Settings:
        """Settings from an optional TOML file, FEDCORE_* variables, then ``overrides`` (CLI flags).
        ``None`` overrides are ignored so unset CLI flags do not mask the file or environment."""
        path = Path(config_file) if config_file else None
        if path is not None and not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        token = _TOML_PATH.set(path)
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        finally:
            _TOML_PATH.reset(token)
