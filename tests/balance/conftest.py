"""Imbalance tests run on one torch thread: the CPU is shared, and tiny ops only lose from threading."""

import torch

torch.set_num_threads(1)
