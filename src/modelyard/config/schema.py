"""The modelyard YAML config, as pydantic models: frozen, unknown keys rejected.

The keys are the ones users write (see DESIGN.md); sizes are given as ``memory: 4GiB`` and
stored in fields whose names carry the unit (``memory_bytes``).
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    model_validator,
)

from modelyard.config.sizes import parse_size
from modelyard.tensors import DataType, TensorSpec

Bytes = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]
"""A size in bytes; accepts ``4GiB``, ``512MiB``, ``15GB`` or an integer."""

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$"


class LocatedError(ValueError):
    """A cross-field check's error that knows which key is wrong: ``loc`` (relative to the
    model that raised it) lets the loader name that key's file line, not the top level's."""

    def __init__(self, loc: tuple[int | str, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)


class DeviceKind(enum.Enum):
    CUDA = "cuda"
    CPU = "cpu"


class Platform(enum.Enum):
    """Model file formats. ``auto`` picks by the file found in the version folder."""

    AUTO = "auto"
    TORCHSCRIPT = "torchscript"
    TORCH_EXPORT = "torch_export"
    ONNX = "onnx"
    TENSORFLOW = "tensorflow"

    @property
    def artifact(self) -> str:
        """The file a version folder holds in this format; KeyError for AUTO, which has none."""
        return _ARTIFACTS[self]


_ARTIFACTS: dict[Platform, str] = {
    Platform.TORCH_EXPORT: "model.pt2",
    Platform.TORCHSCRIPT: "model.pt",
    Platform.ONNX: "model.onnx",
    Platform.TENSORFLOW: "saved_model.pb",
}


class SwapPolicy(enum.Enum):
    """How a model's served version is replaced by a newer one (see docs/lifecycle.md)."""

    AVAILABILITY = "availability"
    """Load the new version beside the old, then unload the old: no gap, needs room for both."""
    RESOURCE = "resource"
    """When both do not fit: unload the old first, then load the new (requests get 503 between)."""


class DeviceConfig(_Frozen):
    """A device the planner may place models on: a whole GPU, a memory-capped slice, or a CPU."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$", description="Name used in pins and output.")
    kind: DeviceKind = Field(description="cuda or cpu.")
    index: int = Field(0, ge=0, description="CUDA device index; ignored for cpu.")
    memory_bytes: Bytes | None = Field(
        None,
        alias="memory",
        description="Capacity to plan with; for a GPU slice, also the worker's memory cap. "
        "Default: the device's measured total.",
    )
    node: str | None = Field(
        None,
        min_length=1,
        description="With a cluster: the node this device is on (a node id, an IP, or a custom "
        "resource only that node has). Without one: not allowed.",
    )


class ClusterEngine(enum.Enum):
    """Which cluster engine runs the workers on other machines."""

    RAY = "ray"


class ClusterConfig(_Frozen):
    """``cluster:``: join a cluster and plan over every node's devices (docs/cluster.md)."""

    engine: ClusterEngine = Field(ClusterEngine.RAY, description="ray (the one engine so far).")
    address: str = Field(
        "auto",
        min_length=1,
        description="The cluster to join: auto (the one this machine is part of), host:port "
        "of the head's GCS, or ray://host:port (Ray Client).",
    )


class VersionPolicy(_Frozen):
    """Which versions of a model to serve; exactly one of the three keys."""

    latest: int | None = Field(None, ge=1, description="Serve the N highest versions.")
    all: bool | None = Field(None, description="Serve every version found.")
    specific: tuple[int, ...] | None = Field(None, min_length=1, description="Serve these.")

    @model_validator(mode="before")
    @classmethod
    def _default_latest_one(cls, data: object) -> object:
        # No key at all means TF Serving's default policy: the latest version only.
        if isinstance(data, dict) and not {"latest", "all", "specific"} & set(data):
            return {**data, "latest": 1}
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> VersionPolicy:
        given = [k for k in ("latest", "all", "specific") if getattr(self, k) is not None]
        if len(given) > 1:
            raise ValueError(
                f"version_policy sets {' and '.join(given)}; give exactly one of "
                "latest: N, all: true, specific: [versions]"
            )
        if self.all is False:
            raise ValueError("version_policy all: false means nothing; use latest: N instead")
        return self


class BatchingConfig(_Frozen):
    """Dynamic batching, with TF Serving's parameter names."""

    max_batch_size: int = Field(32, ge=1, description="Most rows in one batch.")
    batch_timeout_micros: int = Field(
        1000, ge=0, description="How long a partial batch waits for more rows."
    )
    max_enqueued_batches: int = Field(
        100, ge=1, description="Queue bound, in batches; beyond it requests get 503."
    )
    allowed_batch_sizes: tuple[int, ...] | None = Field(
        None, description="Batches are padded up to the next of these sizes."
    )
    num_batch_threads: int = Field(
        1, ge=1, le=64, description="Batches of one replica that may run at once."
    )

    @model_validator(mode="after")
    def _allowed_sizes(self) -> BatchingConfig:
        sizes = self.allowed_batch_sizes
        if sizes is None:
            return self
        if list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
            raise ValueError(f"allowed_batch_sizes {list(sizes)} must be increasing and >= 1")
        if sizes[-1] != self.max_batch_size:
            raise ValueError(
                f"allowed_batch_sizes ends with {sizes[-1]} but max_batch_size is "
                f"{self.max_batch_size}; the last allowed size must equal max_batch_size"
            )
        return self


class TensorConfig(_Frozen):
    """A signature entry for formats that do not carry one (TorchScript)."""

    name: str
    datatype: DataType
    shape: tuple[int, ...] = Field(description="Dimensions; -1 for any size.")

    @model_validator(mode="before")
    @classmethod
    def _parse_datatype(cls, data: object) -> object:
        if isinstance(data, dict) and isinstance(data.get("datatype"), str):
            data = {**data, "datatype": DataType.parse(data["datatype"])}
        return data

    @model_validator(mode="after")
    def _dims(self) -> TensorConfig:
        if any(d < -1 for d in self.shape):
            raise ValueError(f"shape {list(self.shape)} of {self.name!r}: dims must be >= -1")
        return self

    def spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.datatype, self.shape)


class PagingConfig(_Frozen):
    """``paging:``: serve more models than the devices hold (see docs/paging.md). Off when absent.

    A version not on its device is paged in on its first request; to make room its device
    pages out the coldest versions, to host memory while ``host_memory`` has room, else to disk.
    """

    host_memory_bytes: Bytes = Field(
        0,
        alias="host_memory",
        description="Host memory for paged-out versions' weights; beyond it versions page to "
        "disk. 0: every paged-out version pages to disk.",
    )
    max_wait_ms: int = Field(
        30000,
        ge=1,
        le=3_600_000,
        description="How long a request may wait for its version to page in; past it: 503.",
    )


class ModelConfig(_Frozen):
    """One model: where its versions live and how to serve them."""

    name: str = Field(pattern=MODEL_NAME_PATTERN, description="Name in URLs and RPCs.")
    base_path: Path = Field(description="Folder holding numeric version folders 1/, 2/, ...")
    platform: Platform = Field(Platform.AUTO, description="Model format; auto detects by file.")
    version_policy: VersionPolicy = Field(default_factory=VersionPolicy)
    version_labels: dict[str, int] = Field(
        default_factory=dict, description="Label -> version, e.g. {stable: 1, canary: 2}."
    )
    devices: tuple[str, ...] | None = Field(
        None, min_length=1, description="Pin: the devices this model may use."
    )
    replicas: int = Field(1, ge=1, description="Copies on distinct devices.")
    memory_bytes: Bytes | None = Field(
        None, alias="memory", description="Footprint per replica; overrides the estimate."
    )
    batching: BatchingConfig | None = None
    swap: SwapPolicy = Field(
        SwapPolicy.AVAILABILITY,
        description="availability: load the new version beside the old; resource: unload the "
        "old first when both do not fit.",
    )
    inputs: tuple[TensorConfig, ...] | None = Field(
        None, description="Signature inputs, for formats that carry none (TorchScript)."
    )
    outputs: tuple[TensorConfig, ...] | None = None
    resident: bool = Field(
        False,
        description="With paging: never paged out (latency-critical); its versions always "
        "stay on their devices.",
    )

    @model_validator(mode="after")
    def _checks(self) -> ModelConfig:
        if self.devices is not None and self.replicas > len(set(self.devices)):
            raise ValueError(
                f"model {self.name!r} asks for replicas: {self.replicas} but pins only "
                f"{len(set(self.devices))} device(s) {list(self.devices)}; replicas need distinct "
                "devices, so pin more devices or lower replicas"
            )
        for label in self.version_labels:
            if not label or label[0].isdigit():
                raise ValueError(f"version label {label!r} must be a name, not a number")
        if (self.inputs is None) != (self.outputs is None):
            raise ValueError(f"model {self.name!r}: give both inputs and outputs, or neither")
        return self


class ServerConfig(_Frozen):
    """The whole config file."""

    devices: Literal["auto"] | tuple[DeviceConfig, ...] = Field(
        "auto", description="auto: every GPU found, else the CPU; or an explicit list."
    )
    headroom_fraction: float = Field(
        0.05, ge=0.0, lt=1.0, description="Share of each device's memory the planner keeps free."
    )
    models: tuple[ModelConfig, ...] = Field(default=(), description="The models to serve.")
    cluster: ClusterConfig | None = Field(
        None, description="Join a cluster (Ray); absent: this machine only."
    )
    poll_interval_seconds: float | None = Field(
        None,
        description="Seconds between polls of the base paths for new versions (default: "
        "--file_system_poll_wait_seconds, 1); 0 or less: look once at start only.",
    )
    paging: PagingConfig | None = Field(
        None,
        description="Page versions between device, host memory and disk (off when absent).",
    )

    @model_validator(mode="after")
    def _checks(self) -> ServerConfig:
        names = [m.name for m in self.models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            again = next(i for i, n in enumerate(names) if n in dupes and names.index(n) < i)
            raise LocatedError(
                ("models", again, "name"),
                f"model names must be unique; repeated: {', '.join(dupes)}",
            )
        if isinstance(self.devices, tuple):
            device_names = [d.name for d in self.devices]
            dupes = sorted({n for n in device_names if device_names.count(n) > 1})
            if dupes:
                raise ValueError(f"device names must be unique; repeated: {', '.join(dupes)}")
            for i, model in enumerate(self.models):
                for j, pin in enumerate(model.devices or ()):
                    if pin not in device_names:
                        raise LocatedError(
                            ("models", i, "devices", j),
                            f"model {model.name!r} pins device {pin!r}, which is not declared; "
                            f"declared devices: {', '.join(device_names)}",
                        )
        return self
