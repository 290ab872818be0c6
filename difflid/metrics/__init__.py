"""Metrics: basicsr does not scan for metric files, so each module is imported here by name."""
