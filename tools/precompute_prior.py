"""Precompute the frozen prior's features of every image of an option file's datasets, for
``train.prior_features: precomputed`` (docs/precomputed_prior.md):

    python tools/precompute_prior.py -opt options/dehaze_its.yml [--force_yml k:k=v] [--device cuda] [--shard I/N]

Several GPUs: torchrun --nproc_per_node=N tools/precompute_prior.py -opt X.yml (each process takes a disjoint slice),
or one process per GPU with --shard 0/N ... --shard N-1/N. A killed run continues where it stopped.
"""
from pathlib import Path

import difflid  # noqa: F401  registers difflid's archs, datasets, losses, metrics and models

# isort: split
from difflid.entry import main
from difflid.entry.precompute import precompute

if __name__ == '__main__':
    main(precompute, Path(__file__).resolve().parents[1])
