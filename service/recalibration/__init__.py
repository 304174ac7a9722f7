"""Streamed BatchNorm recalibration: parameters, the one-pass job, and its orchestration."""
