"""loraloop's shell: the Discord app, the scheduler, retrain orchestration and the command line."""
