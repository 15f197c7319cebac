"""The transformers folder: what `from_pretrained(folder, trust_remote_code=True)` and `pipeline(...)` load.

    config.json                    PooledClassifierConfig: id2label, pooling, head sizes, the encoder's own
                                   config, auto_map, and the run's effective config (key "finetune_pipeline")
    model.safetensors              encoder and head weights, float32
    modeling_pooled_classifier.py  the model's code: torch and transformers only
    tokenizer files                the run's tokenizer, cutting texts at the run's data.max_length
    README.md                      the model card

This package reads the folder back into its own TextClassifier (same weights, renamed), so that predict and
evaluate run an export exactly as they run a run folder.
"""

import copy
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase

from finetune_pipeline.core.config import config_from_dict, without_machine_paths
from finetune_pipeline.core.model import build_classifier
from finetune_pipeline.core.task import loaded_task
from finetune_pipeline.core.training_mode import TrainingMode
from finetune_pipeline.errors import UserInputError
from finetune_pipeline.runs.artifacts import TEMPERATURE_KEY, LoadedRun
from finetune_pipeline.runs.run_metrics import RunMetrics
from finetune_pipeline.runtime.files import read_json_object
from finetune_pipeline.serving.model_card import model_card

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
RUN_KEY = "finetune_pipeline"  # config.json's record of the run: {"run_dir", "checkpoint", "config"}

THRESHOLDS_KEY = "head.thresholds"  # a multi-label head's buffer (core/model.py)
PROBLEM_TYPES = {"single_label": "single_label_classification", "multi_label": "multi_label_classification",
                 "regression": "regression"}  # transformers' names for the tasks

# transformers names an encoder "encoder" (its "backbone" means a vision backbone); this package says backbone.
PACKAGE_PREFIX, EXPORT_PREFIX = "backbone.", "encoder."


def write_hf_folder(run: LoadedRun, folder: Path, source: dict[str, str], run_config_file: dict[str, Any]) -> None:
    """Write the run's model, tokenizer, code and card into folder: a new temporary folder, renamed into place
    when complete, so its files need no atomic writes of their own."""
    config_class, model_class = shipped_model_classes()
    label_names = run.label_names
    state = run.model.state_dict()
    thresholds = state.pop(THRESHOLDS_KEY, None)  # into config.json: a decision rule, not a weight to load
    temperature = state.pop(TEMPERATURE_KEY, None)  # into config.json too: the calibration, applied in forward
    config = config_class(
        encoder_config=portable_config(run.model.backbone.config),
        pooling=run.config.model.pooling,
        head_hidden_size=run.config.model.hidden_dim,
        head_dropout=run.config.model.dropout,
        id2label=dict(enumerate(label_names)),
        label2id={name: index for index, name in enumerate(label_names)},
        # the pipeline applies softmax (single-label) or sigmoid (multi-label), as predict does
        problem_type=PROBLEM_TYPES[run.task.name],
        label_thresholds=None if thresholds is None else thresholds.tolist(),
        logit_temperature=None if temperature is None else temperature.tolist(),
        **({"target_mean": run.task.target_mean, "target_std": run.task.target_std}
           if run.task.name == "regression" else {}),
        **{RUN_KEY: {**source, "config": without_machine_paths(run.config.to_plain()), "task": run.task.record()}},
    )
    model = model_class(config)
    model.load_state_dict(renamed(state, PACKAGE_PREFIX, EXPORT_PREFIX))  # strict: every weight
    model.save_pretrained(folder)  # safetensors: no pickle
    exported_tokenizer(run).save_pretrained(folder)
    (folder / CARD_FILE).write_text(model_card(run, source, run_config_file), encoding="utf-8")


def portable_config(backbone_config: PretrainedConfig) -> dict[str, Any]:
    """The backbone's config without _name_or_path: where the weights were read from on the training machine (for
    the default backbone, a path inside this machine's site-packages) means nothing elsewhere."""
    return {key: value for key, value in backbone_config.to_dict().items() if key != "_name_or_path"}


def shipped_model_classes() -> tuple[type, type]:
    """The model code the folder ships, imported when an export needs it: it loads transformers' model code,
    which `import finetune_pipeline` and a run on cached features never need. Registered for the auto classes,
    save_pretrained copies its file into the folder and names the classes in config.json's auto_map."""
    from finetune_pipeline.serving.modeling_pooled_classifier import (
        PooledClassifierConfig,
        PooledClassifierForSequenceClassification,
    )

    PooledClassifierConfig.register_for_auto_class()
    PooledClassifierForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
    return PooledClassifierConfig, PooledClassifierForSequenceClassification


def exported_tokenizer(run: LoadedRun) -> PreTrainedTokenizerBase:
    """A copy of the run's tokenizer that cuts texts at the run's data.max_length, as training did: in
    transformers with truncation=True (model_max_length), and in the `tokenizers` library alone, which reads
    tokenizer.json, truncates and pads a batch by itself (transformers applies only what it is called with)."""
    max_length = run.config.data.max_length
    tokenizer = copy.deepcopy(run.tokenizer)
    tokenizer.model_max_length = max_length
    tokenizer.init_kwargs["max_length"] = max_length  # the backbone's tokenizer.json may say another (MiniLM: 128)
    if getattr(tokenizer, "is_fast", False):  # one without tokenizer.json (sentencepiece only) needs transformers
        tokenizer.backend_tokenizer.enable_truncation(max_length)
        tokenizer.backend_tokenizer.enable_padding(pad_id=tokenizer.pad_token_id, pad_token=tokenizer.pad_token)
    return tokenizer


def renamed(state: dict[str, Any], old_prefix: str, new_prefix: str) -> dict[str, Any]:
    """The same tensors, with old_prefix replaced by new_prefix where a name starts with it."""
    return {(new_prefix + name.removeprefix(old_prefix) if name.startswith(old_prefix) else name): tensor
            for name, tensor in state.items()}


def is_hf_export(folder: Path) -> bool:
    try:
        return read_json_object(folder / CONFIG_FILE).get("model_type") == shipped_model_classes()[0].model_type
    except (OSError, ValueError):
        return False


def load_hf_export(folder: Path) -> tuple[LoadedRun, str]:
    """The exported model as the TextClassifier it was trained as, in eval mode on the CPU, and the run's
    checkpoint file it was exported from."""
    hf_config = read_json_object(folder / CONFIG_FILE)
    try:
        record = hf_config[RUN_KEY]
        backbone_config = AutoConfig.for_model(**hf_config["encoder_config"])
        label_names = [hf_config["id2label"][str(index)] for index in range(len(hf_config["id2label"]))]
    except (KeyError, TypeError, ValueError) as err:
        raise UserInputError(f"{folder / CONFIG_FILE}: not a config that finetune export wrote ({err!r}); "
                             "export the run again") from None
    run_config = config_from_dict(record["config"], source=str(folder / CONFIG_FILE))
    task = loaded_task(label_names, record.get("task"), run_config.training.metric)
    # The architecture comes from the config alone; every weight then comes from the folder.
    backbone = AutoModel.from_config(backbone_config, attn_implementation="sdpa")
    mode = TrainingMode.of(run_config).with_layers(backbone_config).merged()
    model = build_classifier(backbone, backbone_config, run_config, task, mode)
    state = renamed(load_file(folder / WEIGHTS_FILE), EXPORT_PREFIX, PACKAGE_PREFIX)
    if task.decides_by_threshold:
        state[THRESHOLDS_KEY] = torch.tensor(hf_config["label_thresholds"])
    if hf_config.get("logit_temperature") is not None:
        state[TEMPERATURE_KEY] = torch.tensor(hf_config["logit_temperature"])
    model.load_state_dict(state)
    # config= : AutoTokenizer would otherwise read config.json, whose auto_map asks to trust remote code
    tokenizer = AutoTokenizer.from_pretrained(folder, config=backbone_config)
    return LoadedRun(model.eval(), tokenizer, label_names, run_config, task, metrics=RunMetrics()), record["checkpoint"]
