"""The training mode: what trains, what stays frozen, and what is computed once and cached, decided here alone.

    mode        trains                                 computed once per text (cache_features)   the loop reads
    frozen      the head                               the pooled features                       features
    full        every layer and the head               nothing                                   token ids
    top_layers  the top K layers and the head          the hidden states entering layer L-K      hidden states
    lora        adapters (every layer, or the top K)   as full, or as top_layers                 token ids / states
                and the head; the weights stay frozen

Three config keys make the choice (training.freeze_backbone, training.train_top_layers, model.lora; config.py
refuses the impossible combinations) and training.cache_features says whether the frozen part is cached. Every
other module asks a TrainingMode built from the config instead of reading those keys again.
"""

import enum
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from transformers import PretrainedConfig

from finetune_pipeline.core.config import Config, LoraSettings
from finetune_pipeline.errors import UserInputError

if TYPE_CHECKING:
    from finetune_pipeline.core.model import TextClassifier

# Keys that training never reads while the backbone is frozen (so no factor of a comparison involving such a run).
FROZEN_BACKBONE_IGNORES = frozenset({"training.encoder_learning_rate", "training.gradient_checkpointing"})

UNUSED_PARTS = {"pooler"}  # BERT's pooler: our pooling never reads it, so no gradient reaches it in any mode


class Cached(enum.Enum):
    """What the frozen part of the model computes once per text, and so what the training loop reads."""

    NOTHING = "token ids"  # every step runs the whole backbone
    POOLED_FEATURES = "pooled features"  # frozen backbone: the head trains on (batch, hidden) vectors
    HIDDEN_STATES = "hidden states"  # top layers: they train on what the lower layers computed


@dataclass(frozen=True)
class TrainingMode:
    trains_backbone: bool  # some of it trains: every layer, the top layers, or adapters
    top_layers: int | None  # training.train_top_layers: K
    lora: LoraSettings | None
    cached: Cached
    gradient_checkpointing: bool
    backbone_name: str
    first_trained_layer: int | None = None  # L - K, once the backbone's layer count is known (with_layers)

    @classmethod
    def of(cls, config: Config) -> "TrainingMode":
        training = config.training
        trains_backbone = not training.freeze_backbone
        if not training.cache_features:
            cached = Cached.NOTHING
        elif not trains_backbone:
            cached = Cached.POOLED_FEATURES
        else:
            cached = Cached.HIDDEN_STATES if training.train_top_layers is not None else Cached.NOTHING
        return cls(trains_backbone, training.train_top_layers, config.model.lora, cached,
                   trains_backbone and training.gradient_checkpointing, config.model.backbone)

    def with_layers(self, backbone_config: PretrainedConfig) -> "TrainingMode":
        """The mode with its first trained layer, from the backbone's layer count (checked against K)."""
        if self.top_layers is None:
            return self
        layers = getattr(backbone_config, "num_hidden_layers", None)
        if layers is None:
            raise UserInputError(f"training.train_top_layers: the backbone '{self.backbone_name}' does not say how "
                                 "many layers it has (no num_hidden_layers in its config.json); use train_top_layers "
                                 "null")
        if self.top_layers > layers:
            raise UserInputError(f"training.train_top_layers: {self.top_layers} is more than the {layers} layers of "
                                 f"the backbone '{self.backbone_name}'; set it to {layers} or less")
        return replace(self, first_trained_layer=layers - self.top_layers)

    def merged(self) -> "TrainingMode":
        """The mode of an exported model: its LoRA adapters were merged into the weights, so it has none."""
        return replace(self, lora=None)

    @property
    def name(self) -> str:
        if not self.trains_backbone:
            return "frozen"
        if self.lora is not None:
            return "lora"
        return "full" if self.top_layers is None else "top_layers"

    @property
    def caches_features(self) -> bool:
        return self.cached is Cached.POOLED_FEATURES

    @property
    def caches_hidden_states(self) -> bool:
        return self.cached is Cached.HIDDEN_STATES

    @property
    def checkpoint_holds_backbone(self) -> bool:
        """Every backbone weight trains, so a checkpoint must hold them all; otherwise it holds what trains (the
        head, the top layers, the adapters) and names the pretrained rest by its fingerprint."""
        return self.name == "full"

    @property
    def fuses_micro_batches(self) -> bool:
        """On cached pooled features a whole optimizer step is a few kilobytes: accumulation saves nothing."""
        return self.caches_features

    @property
    def ignored_keys(self) -> frozenset[str]:
        """Config keys this mode never reads."""
        return frozenset() if self.trains_backbone else FROZEN_BACKBONE_IGNORES

    def prepare(self, model: "TextClassifier") -> None:
        """Freeze what does not train, add the adapters, switch on activation checkpointing: the model as this
        mode trains it (and as a trained run's weights load into it)."""
        if not self.trains_backbone:
            model.freeze_backbone()
            return
        if self.first_trained_layer is not None:
            model.freeze_below(self.first_trained_layer)
        if self.lora is not None:  # after the head: its initial weights do not depend on LoRA
            model.add_lora(self.lora, self.first_trained_layer)
        if self.gradient_checkpointing:
            model.enable_activation_checkpointing()

    def trains_part(self) -> Callable[[str], bool]:
        """Whether this mode trains a part of the backbone ('embeddings', 'layer 3', 'pooler') by its own weights:
        none when frozen or under LoRA (the adapters train instead), all but the unused pooler, or the top layers."""
        if not self.trains_backbone or self.lora is not None:
            return lambda part: False
        if self.first_trained_layer is None:
            return lambda part: part not in UNUSED_PARTS
        first = self.first_trained_layer
        return lambda part: part.startswith("layer ") and int(part.removeprefix("layer ")) >= first

    def what_trains(self) -> str:
        """What trains, in words: 'the head alone', 'every layer and the head', ..."""
        if not self.trains_backbone:
            return "the head alone, the backbone frozen"
        where = "every layer" if self.top_layers is None else f"the top {self.top_layers} layers"
        if self.lora is not None:
            return (f"LoRA adapters (r {self.lora.r}, alpha {self.lora.alpha:g}, on "
                    f"{', '.join(self.lora.target_modules)}) of {where} and the head, the pretrained weights frozen")
        return f"{where} and the head" + ("" if self.top_layers is None else ", the rest frozen")

    def describe(self, layers: int, cache_mib: float | None, cache_dir: str) -> str:
        """The dry run's line: what trains, what is frozen and what is cached ('frozen, features computed once and
        cached'). layers: the backbone's count; cache_mib: the hidden-state cache's size on disk."""
        if not self.trains_backbone:
            return "frozen, features computed once and cached" if self.caches_features else "frozen, run every step"
        lora = self.lora
        adapters = (f"LoRA adapters (r {lora.r}, alpha {lora.alpha:g}) on {', '.join(lora.target_modules)} of the "
                    f"{'top layers' if self.top_layers is not None else 'layers'}, the backbone's own weights frozen"
                    if lora is not None else "")
        first = self.first_trained_layer
        if first is None:
            return adapters or "trained"
        trained = (f"layers {first}-{layers - 1} of {layers} trained" + (f" ({adapters})" if adapters else "")
                   + ", the embeddings" + (f" and layers 0-{first - 1}" if first else "") + " frozen")
        if not self.caches_hidden_states:
            return f"{trained}, run every step"
        return (f"{trained}; the hidden states entering layer {first} computed once and cached in {cache_dir}: about "
                f"{cache_mib:,.0f} MiB on disk")
