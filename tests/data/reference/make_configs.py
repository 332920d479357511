"""Write ``config-omegaconf-<version>.pt``: a reference-style checkpoint whose ``config`` is
pickled by the OmegaConf that is importable, as the reference's training script saves it
(``clamp_range`` set to a tuple after the config is created). Run once per OmegaConf version:

    python tests/data/reference/make_configs.py                          # the installed one (2.4)
    PYTHONPATH=/path/to/omegaconf-2.3 python tests/data/reference/make_configs.py

``config.json`` is the plain config the files must read back as.
"""

import json
from pathlib import Path

import omegaconf
import torch
from omegaconf import OmegaConf

HERE = Path(__file__).resolve().parent
CONFIG = json.loads((HERE / "config.json").read_text())

cfg = OmegaConf.create({k: v for k, v in CONFIG.items()})
cfg.model.params.clamp_range = (-1, 1)  # what the reference's train.py does before saving
version = ".".join(omegaconf.__version__.split(".")[:2])
torch.save({"config": cfg, "state_dict": {"module.quantize.basis": 2 ** torch.arange(17, -1, -1)},
            "optimizer": {"lr": 1e-4}}, HERE / f"config-omegaconf-{version}.pt")
print(f"wrote config-omegaconf-{version}.pt ({type(cfg.model.params.clamp_range).__name__} clamp_range)")
