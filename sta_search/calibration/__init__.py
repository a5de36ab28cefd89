"""Measured data shipped with the package (cost-model calibration)."""
