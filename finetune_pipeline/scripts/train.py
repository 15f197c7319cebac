"""Train as a JSON config says:  python finetune_pipeline/scripts/train.py --config CONFIG.json"""

import sys
from pathlib import Path

# Run from a checkout without installing: make the package importable from the repository root.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from finetune_pipeline.cli import train_script_main

if __name__ == "__main__":
    sys.exit(train_script_main())
