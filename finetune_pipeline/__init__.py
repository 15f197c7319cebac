"""finetune_pipeline: fine-tune a pretrained text encoder with a small classification head.

Read it in the order a run goes: config -> data -> batching -> model -> training (the loop) ->
evaluation; feature_cache, memory_check and freeze_proof around it; artifacts and run_log for what
is written; run wires the steps, cli and scripts/train.py are the entry points.
"""
