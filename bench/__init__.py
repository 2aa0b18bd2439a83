"""Bench programs: stress and comparison runs, never timed assertions."""
