"""Ablations as data: aggregation, statistics, paper-shaped reports, promotion decisions."""
