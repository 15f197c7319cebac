"""A pretrained text encoder, mean or [CLS] pooling, and a two-layer GELU head, as a transformers model.

    text -> tokenizer -> encoder -> (batch, seq, hidden) -> pooling -> (batch, hidden) -> head -> logits

`finetune export` copies this file into the exported folder, whose config.json names it in `auto_map`, so
that `AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True)` and
`pipeline("text-classification", model=folder, trust_remote_code=True)` load the model. It imports torch
and transformers only: the folder works without finetune_pipeline installed. That is why ClassifierHead and
pool repeat finetune_pipeline/core/model.py's (same module names, so the weights load as they are; core/model.py
cannot import this file instead, since it imports transformers' model code, which a run on cached features never
loads); the export tests check that both give the same probabilities.
"""

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class PooledClassifierConfig(PretrainedConfig):
    """The encoder's own config (any AutoModel architecture), the pooling and the head's sizes; for
    problem_type "multi_label_classification" each label's decision threshold (label_thresholds, chosen on the val
    split), for "regression" the target's train mean and standard deviation (the head predicts it standardised);
    for a classifier the temperature its logits are divided by (logit_temperature, one or one per label, fitted on
    the val split; `temperature` is text generation's)."""

    model_type = "pooled_classifier"
    sub_configs = {"encoder_config": AutoConfig}

    def __init__(
        self,
        encoder_config: dict | PretrainedConfig | None = None,
        pooling: str = "mean",
        head_hidden_size: int = 256,
        head_dropout: float = 0.1,
        label_thresholds: list[float] | None = None,
        logit_temperature: list[float] | None = None,
        target_mean: float = 0.0,
        target_std: float = 1.0,
        **kwargs,
    ) -> None:
        if isinstance(encoder_config, dict):  # as read from config.json
            encoder_config = AutoConfig.for_model(**encoder_config)
        self.encoder_config = encoder_config
        self.pooling = pooling
        self.head_hidden_size = head_hidden_size
        self.head_dropout = head_dropout
        self.label_thresholds = label_thresholds
        self.logit_temperature = logit_temperature
        self.target_mean = target_mean
        self.target_std = target_std
        super().__init__(**kwargs)


class ClassifierHead(nn.Module):
    """Linear(hidden, head_hidden_size) -> GELU -> Dropout -> Linear(head_hidden_size, num_labels)."""

    def __init__(self, hidden_size: int, head_hidden_size: int, num_labels: int, dropout: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, head_hidden_size)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.out_proj = nn.Linear(head_hidden_size, num_labels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(self.activation(self.dense(features))))


def pool(hidden_states: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(batch, seq, hidden) -> (batch, hidden)."""
    if pooling == "cls":
        return hidden_states[:, 0]
    # mean over real tokens only: padding must not dilute the average
    mask = attention_mask.unsqueeze(-1).to(hidden_states.dtype)
    return (hidden_states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)


class PooledClassifierForSequenceClassification(PreTrainedModel):
    config_class = PooledClassifierConfig
    base_model_prefix = "encoder"
    main_input_name = "input_ids"
    _supports_sdpa = True  # the attention is the encoder's own; this wrapper only passes the choice on
    _no_split_modules: list[str] = []  # none of its own; device_map="auto" collects the encoder's blocks

    def __init__(self, config: PooledClassifierConfig) -> None:
        super().__init__(config)
        self.encoder = AutoModel.from_config(config.encoder_config)
        self.head = ClassifierHead(config.encoder_config.hidden_size, config.head_hidden_size, config.num_labels,
                                   config.head_dropout)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> SequenceClassifierOutput:
        # token_type_ids is accepted because the pipeline passes every tokenizer output, and left out because
        # training fed the encoder token ids and the mask only (a single text's token types are all 0 anyway).
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        hidden_states = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        logits = self.head(pool(hidden_states, attention_mask, self.config.pooling))
        if self.config.logit_temperature is not None:  # calibrated on the val split: honest probabilities
            logits = logits / torch.tensor(self.config.logit_temperature, dtype=logits.dtype, device=logits.device)
        if self.config.problem_type == "regression":  # the number itself, in the target's units
            logits = logits * self.config.target_std + self.config.target_mean
        return SequenceClassifierOutput(loss=None if labels is None else self.loss(logits, labels), logits=logits)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of the problem type (as transformers' own sequence classifiers compute it)."""
        if self.config.problem_type == "regression":
            return nn.functional.mse_loss(logits.squeeze(-1), labels.float())
        if self.config.problem_type == "multi_label_classification":
            return nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
        return nn.functional.cross_entropy(logits, labels)
