"""Peak memory of one training step of a BERT-base-sized backbone, with and without gradient checkpointing.

    python benchmarks/bench_gradient_checkpointing.py [--batch-size 8] [--length 256]

The backbone is built from a config (BERT-base: 12 layers, hidden 768, 110M parameters) with random
weights: nothing is downloaded, and memory does not depend on the weights' values. Each setting runs in
a fresh process (forward, backward, AdamW step, as a full fine-tuning step does), whose peak resident
memory is read from the kernel; the activation memory is what checkpointing trades for recomputation.
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def one_step(checkpointing: bool, batch_size: int, length: int) -> dict[str, float]:
    import torch
    import torch.nn.functional as F
    from transformers import BertConfig, BertModel

    from finetune_pipeline.core.config import ModelConfig
    from finetune_pipeline.core.device import peak_process_memory_mb, reset_peak_process_memory
    from finetune_pipeline.core.model import TextClassifier

    torch.manual_seed(0)
    backbone = BertModel(BertConfig(), add_pooling_layer=False)  # BERT-base sizes
    model = TextClassifier(backbone, backbone.config, ModelConfig(), num_labels=2).train()
    if checkpointing:
        model.enable_activation_checkpointing()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, fused=True)
    input_ids = torch.randint(1000, 2000, (batch_size, length))
    mask = torch.ones_like(input_ids)
    labels = torch.randint(0, 2, (batch_size,))
    reset_peak_process_memory()
    before = peak_process_memory_mb()
    started = time.perf_counter()
    F.cross_entropy(model(input_ids, mask), labels).backward()
    optimizer.step()
    return {"seconds": time.perf_counter() - started, "peak_mb": peak_process_memory_mb(), "before_step_mb": before}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--child", choices=["on", "off"], help="internal: run one setting and print its figures")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_step(args.child == "on", args.batch_size, args.length)))
        return 0
    rows = []
    for setting in ("off", "on"):
        output = subprocess.run([sys.executable, __file__, "--child", setting, "--batch-size", str(args.batch_size),
                                 "--length", str(args.length)], capture_output=True, text=True, check=True,
                                cwd=REPO_ROOT).stdout
        rows.append((setting, json.loads(output.strip().splitlines()[-1])))
    print(f"BERT-base-sized backbone, batch {args.batch_size} x {args.length} tokens, one full fine-tuning step, fp32")
    print("| gradient checkpointing | peak RSS | of which the step | step time |")
    print("| --- | ---: | ---: | ---: |")
    for setting, figures in rows:
        print(f"| {setting} | {figures['peak_mb']:,.0f} MiB | {figures['peak_mb'] - figures['before_step_mb']:,.0f} MiB "
              f"| {figures['seconds']:.1f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
