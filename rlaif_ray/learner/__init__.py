"""The training half: LearnerGroup (Ray actors running DeepSpeed), losses, objectives, checkpoints.

Import the pieces from their modules (`learner.group`, `learner.objectives`, ...): this package file
stays import-light because the CLI imports every job module to build `--help`.
"""
