"""A model spec, parsed here and nowhere else: `bundled` (tracekit's own small model,
model/bundled/) or a checkpoint directory, run by our runtime; `transformers:DIR` (or
`transformers:bundled`), the same checkpoint run by transformers' reference implementation;
`openai:URL`, a served model, which also needs the name it is served under. Importable without
torch: the command line parses specs before any model is loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import BackendError

BUNDLED = Path(__file__).with_name("bundled")  # the small model shipped with tracekit


class CheckpointError(BackendError):
    """A checkpoint cannot be loaded; the message names the tensor, file or device and the fix
    (a BackendError: the command line reports it as a model that cannot be loaded)."""


@dataclass(frozen=True)
class ModelSpec:
    """One parsed spec. `kind` says who runs the model: "runtime" (ours), "transformers" or
    "openai"; `target` is the checkpoint (`bundled` or a path) or the server's URL;
    `served_name` the name a served model answers to (openai only)."""

    text: str
    kind: str
    target: str
    served_name: str | None = None

    @classmethod
    def parse(cls, spec: str | ModelSpec, served_name: str | None = None) -> ModelSpec:
        """A spec as written (or one already parsed, returned as it is)."""
        if isinstance(spec, ModelSpec):
            return spec
        for kind in ("openai", "transformers"):
            if spec.startswith(f"{kind}:"):
                return cls(spec, kind, spec.removeprefix(f"{kind}:"), served_name)
        return cls(spec, "runtime", spec, served_name)

    @property
    def served(self) -> bool:
        """A model behind a server (openai:URL): no local checkpoint, no local tokenizer."""
        return self.kind == "openai"

    @property
    def needs_name(self) -> bool:
        """A served model given without the name it is served under: it cannot be asked."""
        return self.served and not self.served_name

    def directory(self) -> Path:
        """The checkpoint directory of a local spec."""
        if self.served:
            raise ValueError(f"{self.text} is served: it has no checkpoint directory")
        return checkpoint_directory(self.target)

    def __str__(self) -> str:
        return self.text


def checkpoint_directory(spec: str) -> Path:
    """The directory a checkpoint spec names: `bundled` is tracekit's own small model."""
    if spec != "bundled":
        return Path(spec)
    if not (BUNDLED / "config.json").is_file():
        raise CheckpointError(f"the bundled model is missing from {BUNDLED}: rebuild it (README: "
                              "the bundled model) or name a checkpoint directory")
    return BUNDLED
