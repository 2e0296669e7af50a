"""Training runs: the pretraining run and its step loop, the probe / fine-tune epoch loop, checkpoints, schedules, DDP."""
