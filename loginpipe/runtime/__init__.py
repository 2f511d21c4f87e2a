"""The shell around the core: the application, its worker threads, delivery and checkpoints."""
