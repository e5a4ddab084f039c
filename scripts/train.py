"""Train with accelerate: one process per GPU, on one or several nodes (or CPU processes).

    accelerate launch scripts/train.py --config configs/small.yaml --out runs/small
    accelerate launch --config_file configs/accelerate/fsdp.yaml scripts/train.py --config configs/small.yaml
    accelerate launch scripts/train.py --config configs/tiny.yaml --objective ar train.lr=1e-3
    accelerate launch scripts/train.py --out runs/small --resume

On CPU (2 processes, gloo): ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2
--num_machines 1 --mixed_precision no --dynamo_backend no scripts/train.py --config configs/tiny.yaml
Options: `python scripts/train.py --help`; the loop itself: diffmamba/cli/train.py.
"""
import sys

from diffmamba.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
