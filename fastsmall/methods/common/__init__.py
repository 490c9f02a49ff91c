"""The layer every method pipeline shares: the resumable :class:`Trainer`, config + CLI,
run directory, atomic checkpoints, RNG state, progress bars, torch.distributed helpers,
the ``--impl`` choice, and what KE and DSD share (generations, data, prunable layers)."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import (ConfigError, add_config_arguments, config_fingerprint, config_from_args, list_option, option,
                     validate_config)
from .distributed import Distributed, DistributedTimeout
from .impl import IMPLS, choose
from .progress import progress
from .report import mean_std, write_report
from .rng import derive_seed, get_rng_state, seed_everything, set_rng_state
from .rundir import RunDir
from .trainer import Trainer, run_trainer

__all__ = [
    "CheckpointError", "load_checkpoint", "save_checkpoint",
    "ConfigError", "add_config_arguments", "config_fingerprint", "config_from_args", "validate_config",
    "option", "list_option", "Distributed", "DistributedTimeout", "IMPLS", "choose", "progress", "derive_seed", "get_rng_state",
    "seed_everything", "set_rng_state", "RunDir", "mean_std", "write_report", "Trainer", "run_trainer",
]
