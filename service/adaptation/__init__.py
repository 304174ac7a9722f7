"""Adaptation from live traffic: capture, alarm, candidate, guardrails, decision."""
