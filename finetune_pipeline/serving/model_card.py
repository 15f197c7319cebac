"""The model card: README.md of the transformers folder, in the Hugging Face hub's format.

YAML front matter (what the hub indexes: library, task, tags, base model, language), then what a reader
needs to trust and use the model: task and labels, how to load it, the data (with sha256), the val and test
scores per class, how it was trained (precision, device, the effective config) and its limitations. Every
figure comes from the run folder's metrics.json and config.json.
"""

import json
import re
from datetime import date
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCardData, metadata_load, try_to_load_from_cache

from finetune_pipeline.core.calibration import describe_temperature
from finetune_pipeline.core.config import TASK_METRICS, Config, portable_path, without_machine_paths
from finetune_pipeline.core.model import resolve_backbone
from finetune_pipeline.core.training_mode import TrainingMode
from finetune_pipeline.runs.artifacts import BEST_MODEL_FILE, LoadedRun
from finetune_pipeline.runs.run_metrics import RunMetrics

HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")  # "owner/name" or "name"


def model_card(run: LoadedRun, source: dict[str, str], run_config_file: dict[str, Any]) -> str:
    """source: {"run_dir": its name, "checkpoint": the file exported}; run_config_file: the run's config.json."""
    config, metrics = run.config, run.metrics
    backbone = config.model.backbone
    shown_backbone = portable_path(backbone)  # a local folder by its name: the path is this machine's
    # the backbone's language is the model's only where the run did not find the texts in another one
    language = None if metrics.language_warning else backbone_language(backbone)
    front_matter = ModelCardData(
        library_name="transformers", pipeline_tag="text-classification",
        tags=["text-classification", "custom_code", "finetune-pipeline"],
        base_model=backbone if is_hub_id(backbone) else None, language=language,
    ).to_yaml()
    labels = ", ".join(f"`{name}`" for name in run.label_names)
    max_length = config.data.max_length
    sections = [
        f"---\n{front_matter}\n---",
        f"# {'Text regression' if run.task.name == 'regression' else 'Text classifier'}: {', '.join(run.label_names)}",
        f"Fine-tuned from `{shown_backbone}` with finetune_pipeline: run `{source['run_dir']}`, checkpoint "
        f"`{source['checkpoint']}` (epoch {checkpoint_epoch(metrics, source['checkpoint'])}). "
        f"Exported on {date.today().isoformat()}.",
        "## Task",
        f"{task_words(run, labels)} The encoder's last hidden states are {pooling_words(config.model.pooling)}, then "
        f"a two-layer head scores them (Linear {run.model.head.dense.in_features} -> {config.model.hidden_dim}, GELU, "
        f"dropout {config.model.dropout}, Linear {config.model.hidden_dim} -> {run.task.num_outputs}).",
        "## How to use",
        f"```python\nfrom transformers import pipeline\n\n{usage(run)}\n```",
        "`trust_remote_code=True` runs `modeling_pooled_classifier.py` from this folder (it imports torch and "
        f"transformers only). `truncation=True` cuts texts at {max_length} tokens, as training did.",
        "## Data",
        data_table(metrics),
        "## Results",
        results(metrics, source["checkpoint"]),
        "## Training",
        training(metrics, backbone_training(config)),
        "Effective config (the run's config.json):",
        f"```json\n{json.dumps(without_machine_paths(run_config_file), indent=2, ensure_ascii=False)}\n```",
        "## Limitations",
        limitations(metrics, language, shown_backbone, max_length),
    ]
    return "\n\n".join(sections) + "\n"


def task_words(run: LoadedRun, labels: str) -> str:
    pair = (f" Each example is a pair of texts (`{run.config.data.text_column}`, `{run.config.data.text_pair_column}`), "
            "read together in the encoder's pair template." if run.config.data.text_pair_column else "")
    if run.task.name == "regression":
        return (f"Regression: one number per example, `{run.label_names[0]}`. The head predicts it standardised with "
                f"the train split's mean {run.task.target_mean:.4g} and standard deviation {run.task.target_std:.4g} "
                "(config.json's `target_mean`, `target_std`); the model's output is the number in its own units."
                + pair)
    if run.task.name == "multi_label":
        thresholds = ", ".join(f"`{name}` {value:.2f}" for name, value in
                               zip(run.label_names, run.model.head.decision_thresholds.tolist(), strict=True))
        return (f"Multi-label text classification over {len(run.label_names)} labels: {labels}. Each label gets its "
                "own sigmoid probability, and is predicted when that reaches the label's threshold, chosen on the val "
                f"split (config.json's `label_thresholds`): {thresholds}." + pair)
    return f"Single-label text classification into {len(run.label_names)} classes: {labels}." + pair


def usage(run: LoadedRun) -> str:
    """How to call transformers' pipeline for this task (and for text pairs)."""
    example = ('{"text": "A warm, funny film.", "text_pair": "I liked it."}' if run.config.data.text_pair_column
               else '"A warm, funny film."')
    load = 'classifier = pipeline("text-classification", model="PATH/TO/THIS/FOLDER", trust_remote_code=True'
    if run.task.name == "regression":
        return f'{load}, function_to_apply="none")\nclassifier([{example}], truncation=True)  # [{{"label": ..., "score": the number}}]'
    if run.task.name == "multi_label":
        return (f"{load}, top_k=None)\nthresholds = dict(zip(classifier.model.config.id2label.values(), "
                "classifier.model.config.label_thresholds))\n"
                f"[[row[\"label\"] for row in rows if row[\"score\"] >= thresholds[row[\"label\"]]]\n"
                f" for rows in classifier([{example}], truncation=True)]")
    return f"{load}, top_k=None)\nclassifier([{example}], truncation=True)"


def is_hub_id(backbone: str) -> bool:
    return not Path(backbone).expanduser().exists() and HUB_ID.fullmatch(backbone) is not None


def backbone_language(backbone: str) -> str | list[str] | None:
    """The language in the backbone's own model card, where a copy is on this machine (nothing is fetched)."""
    location = Path(resolve_backbone(backbone))
    readme = location / "README.md" if location.is_dir() else try_to_load_from_cache(backbone, "README.md")
    if not isinstance(readme, (str, Path)) or not Path(readme).is_file():  # not cached: a sentinel or None
        return None
    return (metadata_load(readme) or {}).get("language")


def checkpoint_epoch(metrics: RunMetrics, checkpoint: str) -> int | None:
    return metrics.best_epoch if checkpoint == BEST_MODEL_FILE else metrics.history[-1]["epoch"]


def pooling_words(pooling: str) -> str:
    return "averaged over the text's tokens (mean pooling)" if pooling == "mean" else "taken at [CLS]"


def cell(value: Any) -> str:
    return str(value).replace("|", "\\|")


def data_table(metrics: RunMetrics) -> str:
    rows = ["| split | examples | file | sha256 |", "| --- | ---: | --- | --- |"]
    for split, file in (metrics.data_files or {}).items():
        where = ("carved out of the train file (seeded, stratified)", "") if file is None else (
            f"`{cell(portable_path(file['path']))}`", f"`{file['sha256']}`")
        rows.append(f"| {split} | {(metrics.split_sizes or {})[split]:,} | {where[0]} | {where[1]} |")
    return "\n".join(rows)


def results(metrics: RunMetrics, checkpoint: str) -> str:
    scores = {"val": metrics.val_metrics or {}, "test": metrics.test_metrics or {}}
    names = TASK_METRICS[metrics.task_type]
    lines = [f"The best checkpoint is the epoch with the best val {metrics.metric_name} (epoch "
             f"{metrics.best_epoch}); the test split was scored once, with it.", "",
             f"| split | {' | '.join(names)} |", f"| --- |{' ---: |' * len(names)}"]
    lines += [f"| {split} | {' | '.join(f'{values[name]:.4f}' for name in names)} |" for split, values in scores.items()]
    lines += [f"| {split}, baseline: {cell(name)} | {' | '.join(f'{values[metric]:.4f}' for metric in names)} |"
              for split, by_name in (metrics.baselines or {}).items() for name, values in by_name.items()]
    if metrics.baselines:
        lines += ["", "A baseline answers without reading the text (fit on the train split's labels alone): a score "
                  "near it means the model learned little."]
    lines += [f"\n**Warning:** {flag}" for flag in metrics.score_flags or []]
    if (calibration := metrics.calibration) is not None:
        test = calibration["test"]
        lines += ["", f"The probabilities are calibrated: the logits are divided by a temperature fitted on the val "
                  f"split ({describe_temperature(calibration['temperature'])}; config.json's `logit_temperature`), "
                  f"which changes no decision. Expected calibration error on test: {test['before']['ece']:.4f} "
                  f"before, {test['after']['ece']:.4f} after."]
    threshold = metrics.task_type == "multi_label"
    for split, values in filter(lambda item: "per_class" in item[1], scores.items()):
        lines += ["", f"Per {'label' if threshold else 'class'}, {split}:", "",
                  f"| {'label' if threshold else 'class'} | precision | recall | F1 | support |"
                  + (" threshold |" if threshold else ""), "| --- | ---: | ---: | ---: | ---: |" + (" ---: |" if threshold else "")]
        lines += [f"| {cell(name)} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | {c['support']} |"
                  + (f" {c['threshold']:.2f} |" if threshold else "") for name, c in values["per_class"].items()]
    final = metrics.history[-1]
    if checkpoint != BEST_MODEL_FILE and final["epoch"] != metrics.best_epoch:
        final_scores = " and ".join(f"{name} {final[f'val_{name}']:.4f}" for name in names)
        lines += ["", f"This folder holds the final checkpoint (epoch {final['epoch']}), not the best one: its val "
                  f"{final_scores}; its test scores were not measured."]
    return "\n".join(lines)


def backbone_training(config: Config) -> str:
    """How the backbone was trained, in words."""
    mode = TrainingMode.of(config)
    merged = "; the adapters are merged into these weights" if mode.lora is not None else ""
    return f"{mode.what_trains()}{merged}"


def training(metrics: RunMetrics, backbone: str) -> str:
    precision = metrics.mixed_precision or {}
    reason = f" ({precision['reason']})" if precision["reason"] else ""
    return "\n".join([
        f"- device: {metrics.device}",
        f"- precision: {precision['requested']} requested, {precision['used']} used{reason}. The exported weights "
        "are float32, as the run's checkpoints are: run in float32, they give the run's probabilities within 1e-5",
        f"- what trained: {backbone}",
        f"- epochs: {len(metrics.history)}, effective batch size {metrics.effective_batch_size}, seed "
        f"{metrics.seed}",
    ])


def limitations(metrics: RunMetrics, language: str | list[str] | None, backbone: str, max_length: int) -> str:
    script = ((metrics.tokenization or {}).get("train") or {}).get("script")
    texts = f"; the training texts are in {script.capitalize()} script" if script else ""
    spoken = (f"{', '.join(language) if isinstance(language, list) else language} (from the backbone's model card)"
              f"{texts}" if language else
              f"not the backbone's{texts}. {metrics.language_warning}" if metrics.language_warning else
              f"unknown here (no model card of `{backbone}` on this machine); it is the backbone's{texts}")
    cut = metrics.token_lengths.get("test")
    cut_text = f" ({cut['truncated_share']:.1%} of the test texts were longer)" if cut else ""
    return "\n".join([
        f"- Language: {spoken}. Texts in other languages get unreliable scores.",
        f"- Length: texts are cut at {max_length} tokens{cut_text}; words beyond that are not seen.",
        "- Scope: the scores hold for data like the files above; a different domain or label distribution "
        "can score lower. They come from one run with one seed.",
    ])
