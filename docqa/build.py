"""The build stamp: what made an index (its encoder, or given embeddings; the vectors' dimension; the
index options), and every check of whether a model, engine or another index is compatible with it.

An index records its stamp once, at its first ingest or add, and never mixes vectors of another
encoder, image edge, engine or engine conversion. The stamp is stored as JSON in the index's meta
table (`to_json` / `from_json`); stamps written by earlier versions lack some keys and read as the
defaults of their day (engine "torch", conversion not recorded, default index options).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import IndexMismatchError, ModelRequiredError

BUILD_KEY = "build"  # the meta-table key the stamp is stored under
TRANSFORMERS = "transformers"  # the native loader (docqa.models.retriever has the other)


@dataclass(frozen=True)
class EncoderStamp:
    """What an index records about the model that built it."""

    model: str  # the id/path as the user gave it (local folders: absolute path)
    family: str  # "colmodernvbert" | "colqwen2" | "colpali" (from config.model_type)
    config_hash: str  # sha256 of the model config's canonical JSON (stable across loads)
    dtype: str  # e.g. "float32"
    image_edge: int  # longest page edge in pixels fed to the model
    dim: int  # embedding dimension
    engine: str = "torch"  # what runs the model: "torch" | "openvino" (docqa.models.engines)
    # what the engine computes in, e.g. "float32" or "int8 (...)"; None in stamps written before
    # engine conversions were recorded
    precision: str | None = "float32"
    loader: str = TRANSFORMERS  # how it was loaded: "transformers" (native class) | "sentence-transformers"
    revision: str = ""  # hub commit of the snapshot, or "sha256:<config and weights>" of a local folder
    trust_remote_code: bool = False  # whether the checkpoint's own code ran (--trust-remote-code)
    layout: str = ""  # how page tokens map to the image ("tiles" | "grid" | "square"; "" when unknown)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EncoderStamp:
        """A recorded encoder (stamps from before engines count as torch; before conversions were
        recorded, the precision is unknown; before loaders, the native loader and an unknown revision)."""
        known = {name: data[name] for name in cls.__dataclass_fields__ if name in data}
        return cls(**{"engine": "torch", "precision": None, **known})

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def recorded_model(model: str) -> str:
    """How a model is recorded in a stamp: local folders as absolute paths, hub ids as given."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.is_dir() else model


@dataclass(frozen=True)
class BuildStamp:
    """What built one index; see the module docstring."""

    encoder: EncoderStamp | None  # None: pages given as embeddings (DocIndex.add_embeddings)
    dim: int
    options: dict[str, Any] | None = None  # docqa.index.storage.IndexOptions as JSON; None: from before options
    docqa_version: str = __version__
    created: float = field(default_factory=time.time)

    @classmethod
    def new(cls, encoder: EncoderStamp | None, dim: int, options: dict[str, Any]) -> BuildStamp:
        """The stamp a first ingest (encoder) or add (None, vectors of `dim`) records."""
        return cls(encoder=encoder, dim=dim, options=options)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BuildStamp:
        encoder = None if data.get("encoder") is None else EncoderStamp.from_json(data["encoder"])
        dim = data.get("dim") or (encoder.dim if encoder is not None else 0)  # stamps from before "dim"
        return cls(
            encoder=encoder,
            dim=int(dim),
            options=data.get("options"),
            docqa_version=data.get("docqa_version", ""),
            created=data.get("created", 0.0),
        )

    def to_json(self) -> dict[str, Any]:
        """The stamp as stored (a stamp from before index options has no "options")."""
        data: dict[str, Any] = {"encoder": None if self.encoder is None else self.encoder.to_json(), "dim": self.dim}
        if self.options is not None:
            data["options"] = self.options
        return {**data, "docqa_version": self.docqa_version, "created": self.created}

    # --- what the stamp says --------------------------------------------------------------------
    @property
    def model(self) -> str | None:
        """The model that built the index (None for given embeddings)."""
        return None if self.encoder is None else self.encoder.model

    @property
    def family(self) -> str | None:
        return None if self.encoder is None else self.encoder.family

    def encoder_for(self, where: Path | str) -> EncoderStamp:
        """The encoder that built the index; refused for an index of given embeddings."""
        if self.encoder is None:
            raise ModelRequiredError(
                f"{where} holds embeddings given through add_embeddings, not made by a model, so it"
                " cannot encode text or pages; search it with DocIndex.search_embeddings, or ingest"
                " into another --index"
            )
        return self.encoder

    # --- compatibility checks -------------------------------------------------------------------
    def check_load_request(
        self,
        where: Path | str,
        model: str | None,
        image_edge: int | None,
        engine: str | None,
        loader: str | None = None,
    ) -> EncoderStamp:
        """Refuse a model, image edge, engine or loader asked for that is not the index's; returns the
        encoder to load (the index's own model, edge, engine and loader)."""
        built = self.encoder_for(where)
        if loader is not None and loader != built.loader:
            raise IndexMismatchError(
                f"{where} was built by the {built.loader} loader; it cannot take vectors of the {loader}"
                " loader (use another --index)"
            )
        if engine is not None and engine != built.engine:
            raise IndexMismatchError(
                f"{where} was built with the {built.engine} engine; it cannot take --engine {engine}"
                " (vectors of different engines are not mixed; use another --index)"
            )
        if model is not None and recorded_model(model) != built.model:
            raise IndexMismatchError(
                f"{where} was built with model {built.model!r}; it cannot take {model!r}"
                " (use another --index for another model)"
            )
        if image_edge is not None and image_edge != built.image_edge:
            raise IndexMismatchError(
                f"{where} was built at image edge {built.image_edge} px; it cannot take {image_edge}"
            )
        return built

    def check_loaded(self, where: Path | str, stamp: EncoderStamp) -> None:
        """Refuse a retriever loaded for this index (check_load_request) whose checkpoint or engine
        conversion changed since the index was built."""
        built = self.encoder_for(where)
        if stamp.config_hash != built.config_hash:
            raise IndexMismatchError(
                f"the checkpoint {built.model!r} differs from the one {where} was built with"
                " (its config changed); re-ingest into a new index"
            )
        self.check_conversion(where, stamp)
        self.check_loader(where, stamp)

    def check_adopted(self, where: Path | str, stamp: EncoderStamp) -> None:
        """Refuse an already loaded retriever that is not the model the index was built with."""
        built = self.encoder
        if built is None or (stamp.model, stamp.config_hash) != (built.model, built.config_hash):
            made_by = repr(built.model) if built else "given embeddings"
            raise IndexMismatchError(f"{where} was built with {made_by}, not {stamp.model!r}")
        self.check_conversion(where, stamp)
        self.check_loader(where, stamp)

    def check_ingest(self, where: Path | str, stamp: EncoderStamp) -> None:
        """Refuse pages from an encoder other than the one that built the index."""
        built = self.encoder_for(where)
        if (stamp.model, stamp.config_hash, stamp.image_edge) != (built.model, built.config_hash, built.image_edge):
            raise IndexMismatchError(
                f"{where} was built with model {built.model!r} at image edge {built.image_edge} px;"
                f" it cannot take {stamp.model!r} at {stamp.image_edge} px (use another --index)"
            )
        if stamp.engine != built.engine:
            raise IndexMismatchError(
                f"{where} was built with the {built.engine} engine; it cannot take vectors"
                f" of the {stamp.engine} engine (use another --index)"
            )
        self.check_conversion(where, stamp)
        self.check_loader(where, stamp)

    def check_conversion(self, where: Path | str, stamp: EncoderStamp) -> None:
        """Refuse vectors of a converted engine whose conversion differs from the one that built the
        index (recorded as its precision: a new conversion recipe computes other vectors). torch's
        precision follows the device (bfloat16 on a GPU, float32 on a CPU: vectors that agree to
        bfloat16 rounding), so an index ingested on a GPU is still searched on a CPU."""
        recorded = self.encoder.precision if self.encoder is not None else None
        if stamp.engine != "torch" and recorded is not None and recorded != stamp.precision:
            raise IndexMismatchError(
                f"{where} was built by the {stamp.engine} engine computing in {recorded}; this docqa's"
                f" {stamp.engine} engine computes in {stamp.precision} (its conversion changed) and their"
                " vectors are not mixed: re-ingest into another --index"
            )

    def check_loader(self, where: Path | str, stamp: EncoderStamp) -> None:
        """Refuse vectors of another loader or another revision of the checkpoint (an unknown
        revision, as in stamps from before revisions were recorded, matches any)."""
        built = self.encoder_for(where)
        if built.loader != stamp.loader:
            raise IndexMismatchError(
                f"{where}: it was built by the {built.loader} loader; this model loads through {stamp.loader}"
                " (their vectors are not mixed; use another --index)"
            )
        if built.revision and stamp.revision and built.revision != stamp.revision:
            raise IndexMismatchError(
                f"{where}: it was built from revision {built.revision[:19]} of the checkpoint, not"
                f" {stamp.revision[:19]} (the weights changed; re-ingest into another --index)"
            )

    # --- several indexes searched as one (docqa.cluster.shards) ---------------------------------
    def comparable(self) -> tuple:
        """What must agree for two indexes' scores to be comparable: the encoder (or none) and the dim."""
        encoder = self.encoder
        if encoder is None:
            return self.dim, None
        return self.dim, (encoder.model, encoder.family, encoder.config_hash, encoder.image_edge)

    def describe(self) -> str:
        encoder = self.encoder
        if encoder is None:
            return f"given {self.dim}-dim embeddings"
        return f"model {encoder.model!r}, config {encoder.config_hash[:12]}, edge {encoder.image_edge} px"


def common_stamp(paths: list[Path], stamps: list[BuildStamp | None]) -> BuildStamp | None:
    """The stamp every non-empty index of `paths` shares; a mix of encoders (or dims) is refused."""
    stamped = [(path, stamp) for path, stamp in zip(paths, stamps) if stamp is not None]
    if not stamped:
        return None
    first_path, first = stamped[0]
    for path, stamp in stamped[1:]:
        if stamp.comparable() != first.comparable():
            raise IndexMismatchError(
                f"shards {first_path} and {path} were built differently ({first.describe()} vs"
                f" {stamp.describe()}); their scores cannot be merged"
            )
    return first
