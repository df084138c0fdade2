"""The CWM configuration: every field of a Hugging Face `config.json` of model_type "cwm" (or the
early "llama" uploads), with the released 32B model's values as defaults (docs/model.md)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

LAYER_TYPES = ("full_attention", "sliding_attention")
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A config field is missing or wrong; the message names it."""


def _llama3_rope() -> dict:
    return {"rope_type": "llama3", "rope_theta": 1_000_000.0, "factor": 16.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192}


@dataclass
class CwmConfig:
    vocab_size: int = 128256
    hidden_size: int = 6144
    intermediate_size: int = 21504
    num_hidden_layers: int = 64
    num_attention_heads: int = 48
    num_key_value_heads: int = 8
    head_dim: int = 128
    hidden_act: str = "silu"
    max_position_embeddings: int = 131072
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-5
    use_cache: bool = True
    pad_token_id: int | None = None
    bos_token_id: int = 128000
    eos_token_id: list[int] = field(default_factory=lambda: [128001, 128008, 128009])
    tie_word_embeddings: bool = False
    rope_parameters: dict = field(default_factory=_llama3_rope)
    attention_dropout: float = 0.0
    pretraining_tp: int = 1
    mlp_bias: bool = False
    sliding_window: int | None = 8192
    layer_types: list[str] | None = None
    dtype: str = "bfloat16"
    model_type: str = "cwm"

    def __post_init__(self):
        if isinstance(self.eos_token_id, int) and not isinstance(self.eos_token_id, bool):
            self.eos_token_id = [self.eos_token_id]
        self._check_types()
        if self.layer_types is None:  # transformers' rule when config.json has none
            self.layer_types = ["full_attention" if i % 4 == 0 else "sliding_attention"
                                for i in range(self.num_hidden_layers)]
        self.validate()

    @classmethod
    def from_dict(cls, data: dict) -> CwmConfig:
        """From a config.json dict: accepts `rope_parameters` or legacy `rope_theta` +
        `rope_scaling`, and `dtype` or `torch_dtype`; ignores fields it does not know."""
        data = dict(data)
        if data.get("model_type", "cwm") not in ("cwm", "llama"):
            raise ConfigError(f"model_type: {data['model_type']!r} is not a CWM model "
                              "(expected 'cwm' or 'llama')")
        if "rope_parameters" not in data and ("rope_theta" in data or "rope_scaling" in data):
            rope = dict(data.get("rope_scaling") or {"rope_type": "default"})
            rope.setdefault("rope_type", rope.pop("type", "default"))
            rope["rope_theta"] = data.get("rope_theta", 10000.0)
            data["rope_parameters"] = rope
        if "dtype" not in data and "torch_dtype" in data:
            data["dtype"] = data["torch_dtype"]
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def from_file(cls, path: str | Path) -> CwmConfig:
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: no config.json") from None
        except ValueError as exc:
            raise ConfigError(f"{path}: not valid JSON ({exc})") from None
        try:
            return cls.from_dict(data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None

    def _check_types(self) -> None:
        """Each field of the type its annotation names (`int | None`, `list[str]`, ...)."""
        for f in fields(self):
            value, kind = getattr(self, f.name), str(f.type)
            optional = kind.endswith(" | None")
            kind = kind.removesuffix(" | None")
            if value is None and optional:
                continue
            outer, _, inner = kind.partition("[")
            if not _is_a(value, outer) or (inner and not all(
                    _is_a(item, inner.rstrip("]")) for item in value)):
                items = f" of {_PLURALS[inner.rstrip(']')]}" if inner else ""
                raise ConfigError(f"{f.name}: must be {_NAMES[outer]}{items}"
                                  f"{' or null' if optional else ''}, got {value!r}")

    def to_dict(self) -> dict:
        data = asdict(self)
        data["architectures"] = ["CwmForCausalLM"]
        return data

    def validate(self) -> None:
        """Raise ConfigError naming the first bad field (the types are checked first, in
        __post_init__)."""
        positive = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                    "num_attention_heads", "num_key_value_heads", "head_dim",
                    "max_position_embeddings"]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{name}: must be a positive integer, got {value!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_key_value_heads: {self.num_key_value_heads} does not divide "
                              f"num_attention_heads ({self.num_attention_heads})")
        if self.hidden_act != "silu":
            raise ConfigError(f"hidden_act: only 'silu' is supported, got {self.hidden_act!r}")
        if len(self.layer_types) != self.num_hidden_layers:
            raise ConfigError(f"layer_types: {len(self.layer_types)} entries for "
                              f"{self.num_hidden_layers} layers")
        bad = [t for t in self.layer_types if t not in LAYER_TYPES]
        if bad:
            raise ConfigError(f"layer_types: unknown type {bad[0]!r} "
                              f"(use {', '.join(LAYER_TYPES)})")
        if "sliding_attention" in self.layer_types and not (
                isinstance(self.sliding_window, int) and self.sliding_window > 0):
            raise ConfigError(f"sliding_window: must be a positive integer with sliding layers, "
                              f"got {self.sliding_window!r}")
        rope_type = self.rope_parameters.get("rope_type", "default")
        if rope_type not in ("default", "llama3"):
            raise ConfigError(f"rope_parameters.rope_type: {rope_type!r} is not supported "
                              "(use 'default' or 'llama3')")
        if "rope_theta" not in self.rope_parameters:
            raise ConfigError("rope_parameters.rope_theta: missing")
        numbers = ["rope_theta"] + (["factor", "low_freq_factor", "high_freq_factor",
                                     "original_max_position_embeddings"]
                                    if rope_type == "llama3" else [])
        for name in numbers:
            value = self.rope_parameters.get(name)
            if not _is_a(value, "float"):
                raise ConfigError(f"rope_parameters.{name}: must be a number, got {value!r}")
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype: {self.dtype!r} is not one of {', '.join(DTYPES)}")
        if self.pretraining_tp != 1:
            raise ConfigError(f"pretraining_tp: only 1 is supported, got {self.pretraining_tp}")


_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
          "list": "a list", "dict": "an object"}
_PLURALS = {"int": "integers", "str": "strings"}


def _is_a(value: object, kind: str) -> bool:
    """Whether a JSON value is of `kind` (an annotation's name; true and false are not
    numbers)."""
    if isinstance(value, bool):
        return kind == "bool"
    types = {"int": int, "float": (int, float), "bool": bool, "str": str, "list": list,
             "dict": dict}[kind]
    return isinstance(value, types)
