"""Config loading, distributed setup, checkpoints, logging and file formats shared by the entry scripts."""
