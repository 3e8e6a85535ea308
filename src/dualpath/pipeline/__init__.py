"""The layer the CLI and the service call: generation, calibration, evaluation, report, demo."""
