"""The layer every method pipeline shares: config + CLI, run directory, atomic
checkpoints, RNG state, progress bars and torch.distributed helpers."""
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from .config import ConfigError, add_config_arguments, config_fingerprint, config_from_args, validate_config
from .distributed import Distributed
from .progress import progress
from .report import mean_std, write_report
from .rng import derive_seed, get_rng_state, seed_everything, set_rng_state
from .rundir import RunDir

__all__ = [
    "CheckpointError", "load_checkpoint", "save_checkpoint",
    "ConfigError", "add_config_arguments", "config_fingerprint", "config_from_args", "validate_config",
    "Distributed", "progress", "derive_seed", "get_rng_state", "seed_everything", "set_rng_state", "RunDir",
    "mean_std", "write_report",
]
