"""The backbone's fingerprint without reading its weights.

Hashing every tensor of a 90 MB backbone takes about a second, and a frozen run whose features are all
in the cache needs nothing else from those weights. So the tensor hashes are remembered in the cache
folder, keyed by each weight file's path, size, modification time and inode (what git's index and
ccache's direct mode trust): a weight file that is replaced or rewritten gets a new key and is hashed
again the next time the backbone is loaded.
"""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from finetune_pipeline.core.freeze_proof import fingerprint_of
from finetune_pipeline.runtime.files import read_json_object, write_json

# The files transformers reads a model's weights from (shards included).
WEIGHT_FILE_SUFFIXES = (".safetensors", ".bin")
MEMO_FOLDER = "backbone_fingerprints"


@dataclass
class BackboneFingerprint:
    tensor_hashes: dict[str, str]  # sha256 of every tensor of the loaded state dict, by name
    parameters: int

    @property
    def sha256(self) -> str:
        return fingerprint_of(self.tensor_hashes)


def weight_files_signature(location: str) -> list[Any] | None:
    """What the loaded weights depend on, read from the file system alone; None for a hub id.

    The library versions are part of it: they decide how the files become tensors.
    """
    folder = Path(location)
    if not folder.is_dir():
        return None  # a hub id: its files live in the hub's cache, so it is hashed after loading
    files = sorted(path for path in folder.iterdir() if path.suffix in WEIGHT_FILE_SUFFIXES and path.is_file())
    if not files:
        return None
    stats = [(path.resolve(), path.stat()) for path in files]
    return [torch.__version__, transformers.__version__,
            *([str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino] for path, stat in stats)]


def memo_path(cache_dir: Path, signature: list[Any]) -> Path:
    digest = hashlib.sha256(json.dumps(signature).encode()).hexdigest()
    return cache_dir / MEMO_FOLDER / f"{digest[:32]}.json"


def recall(cache_dir: Path, location: str) -> BackboneFingerprint | None:
    """The remembered fingerprint of the weights at location, if their files are as they were."""
    signature = weight_files_signature(location)
    if signature is None:
        return None
    path = memo_path(cache_dir, signature)
    try:
        entry = read_json_object(path)
    except (OSError, ValueError):  # never remembered, or unreadable: hashed again after loading
        return None
    if entry.get("signature") != signature:
        return None
    return BackboneFingerprint(entry["tensor_hashes"], entry["parameters"])


def remember(cache_dir: Path, location: str, fingerprint: BackboneFingerprint) -> None:
    signature = weight_files_signature(location)
    if signature is None:
        return
    path = memo_path(cache_dir, signature)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, {"signature": signature, "tensor_hashes": fingerprint.tensor_hashes,
                          "parameters": fingerprint.parameters})
    except OSError:
        pass  # only a shortcut: the next run hashes the weights again (storing features reports the folder)
