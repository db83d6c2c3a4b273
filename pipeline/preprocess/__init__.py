"""Preprocessing stages: window, register, mask, slices."""
