"""Hugging Face checkpoints: `config.json` plus `model.safetensors` or shards listed in
`model.safetensors.index.json`. The model is built on the meta device and each tensor is read
shard by shard straight to its device and dtype, so no second full copy is ever materialised."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .config import DTYPES, ConfigError, CwmConfig
from .modeling import CwmForCausalLM, rope_inverse_frequencies
from .spec import BUNDLED, CheckpointError, ModelSpec, checkpoint_directory  # noqa: F401

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
TORCH_DTYPES = {name: getattr(torch, name) for name in DTYPES}


FINGERPRINT_BLOCKS, FINGERPRINT_BLOCK = 64, 1 << 16  # blocks read per weights file, bytes


def checkpoint_fingerprint(spec: str) -> str | None:
    """A hash of a local checkpoint's config and weights (None when the spec names no local
    directory with weights): two runs with the same spec but other weights differ here. Reads
    the config, each weights file's name, size and header, and 64 blocks of 64 KiB spread
    over it (a retrained model changes every block; a 60 GB checkpoint costs 4 MB of reads)."""
    import hashlib

    directory = ModelSpec.parse(spec).directory()
    weights = sorted(directory.glob("*.safetensors")) if directory.is_dir() else []
    if not weights:
        return None
    digest = hashlib.sha256((directory / "config.json").read_bytes())
    for path in weights:
        size = path.stat().st_size
        digest.update(f"{path.name}:{size}".encode())
        with open(path, "rb") as file:
            if size <= FINGERPRINT_BLOCKS * FINGERPRINT_BLOCK:
                digest.update(file.read())
                continue
            for i in range(FINGERPRINT_BLOCKS):  # the first holds the header; the last, the end
                file.seek(i * (size - FINGERPRINT_BLOCK) // (FINGERPRINT_BLOCKS - 1))
                digest.update(file.read(FINGERPRINT_BLOCK))
    return digest.hexdigest()


def load_checkpoint(directory: str | Path, device: str | torch.device = "cpu",
                    dtype: torch.dtype | None = None) -> CwmForCausalLM:
    """Load a checkpoint directory into our model (dtype: the config's unless given)."""
    from safetensors import safe_open

    directory = Path(directory)
    try:
        config = CwmConfig.from_file(directory)
    except ConfigError as exc:
        raise CheckpointError(str(exc)) from None  # (it names the file)
    dtype = dtype or TORCH_DTYPES[config.dtype]
    check_device(device, dtype)
    with torch.device("meta"):
        model = CwmForCausalLM(config)
    expected = dict(model.state_dict())
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    files = _shard_files(directory)
    loaded: dict[str, torch.Tensor] = {}
    for path, names in files.items():
        try:
            with safe_open(str(path), framework="pt", device=str(device)) as shard:
                for name in names if names is not None else shard.keys():
                    if name not in expected:
                        raise CheckpointError(f"{path.name}: unexpected tensor {name!r} (not a "
                                              "CWM weight): is this a CWM checkpoint?")
                    tensor = shard.get_tensor(name)
                    if tuple(tensor.shape) != tuple(expected[name].shape):
                        raise CheckpointError(
                            f"{path.name}: tensor {name!r} has shape {tuple(tensor.shape)}, the "
                            f"config needs {tuple(expected[name].shape)}: config.json and "
                            "weights disagree")
                    # On the CPU, a copy: safetensors hands out views of the memory-mapped
                    # file, which would tie the model to the file (and crash it if the file
                    # is truncated or rewritten in place).
                    loaded[name] = tensor.to(dtype, copy=tensor.device.type == "cpu")
        except CheckpointError:
            raise
        except FileNotFoundError:
            raise CheckpointError(f"{path}: shard listed in {INDEX} is missing") from None
        except Exception as exc:  # safetensors reports truncation and corruption as various errors
            raise CheckpointError(f"{path.name}: unreadable ({type(exc).__name__}: {exc}); the "
                                  "file is truncated or corrupt: download it again") from None
    missing = sorted(set(expected) - set(loaded))
    if missing:
        raise CheckpointError(f"missing tensor {missing[0]!r} ({len(missing)} missing in all) in "
                              f"{directory}: the checkpoint is incomplete")
    model.load_state_dict(loaded, strict=False, assign=True)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.register_buffer("inv_freq", rope_inverse_frequencies(config).to(device),
                          persistent=False)
    return model.eval()


def save_checkpoint(model: CwmForCausalLM, directory: str | Path,
                    max_shard_bytes: int = 5 << 30) -> None:
    """Write config.json and safetensors shards (with an index when there is more than one)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    shards, current, size = [], {}, 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[name] = tensor
        size += nbytes
    shards.append(current)
    if len(shards) == 1:
        _save_shard(shards[0], directory / SINGLE)
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        _save_shard(shard, directory / name)
        weight_map.update(dict.fromkeys(shard, name))
    total = sum(t.numel() * t.element_size() for t in state.values())
    (directory / INDEX).write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))


def _save_shard(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """One safetensors file, its mode the umask's like config.json's (safetensors writes 0600)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata={"format": "pt"})
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)


def _shard_files(directory: Path) -> dict[Path, list[str] | None]:
    index = directory / INDEX
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError):
            raise CheckpointError(f"{index}: not a safetensors index (no weight_map)") from None
        files: dict[Path, list[str]] = {}
        for name, file in weight_map.items():
            files.setdefault(directory / file, []).append(name)
        return files
    if (directory / SINGLE).exists():
        return {directory / SINGLE: None}
    raise CheckpointError(f"{directory}: no {SINGLE} or {INDEX}: not a checkpoint directory")


def check_device(device, dtype: torch.dtype) -> None:
    """Refuse, before any file is read, a device this machine lacks or a dtype it cannot run
    (else safetensors' own error would read as a broken file)."""
    try:
        kind = torch.device(device)
    except RuntimeError:
        raise CheckpointError(f"{device!r} is not a device: use cpu, cuda, cuda:N or mps"
                              ) from None
    if kind.type == "cuda":
        count = torch.cuda.device_count()  # 0 without a GPU or with a CPU-only torch
        if count == 0:
            raise CheckpointError(f"device {device}: no CUDA GPU here (torch "
                                  f"{torch.__version__}): use the cpu device")
        if kind.index is not None and kind.index >= count:
            raise CheckpointError(f"device {device}: this machine has {count} CUDA GPU(s), "
                                  f"cuda:0 to cuda:{count - 1}")
        if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
            raise CheckpointError(f"device {device} cannot run bfloat16: pass "
                                  "dtype=torch.float16 or torch.float32")
    elif kind.type == "mps":
        if not torch.backends.mps.is_available():
            raise CheckpointError(f"device {device}: MPS is not available here: use the cpu "
                                  "device")
    elif kind.type != "cpu":
        raise CheckpointError(f"device {device}: checkpoints load on cpu, cuda, cuda:N or mps")
    if dtype == torch.float16 and kind.type == "cpu":
        raise CheckpointError("float16 is slow or unsupported on CPU: pass dtype=torch.float32 "
                              "or torch.bfloat16")
