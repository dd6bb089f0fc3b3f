"""Discriminative class tokens (Schwartz et al., ICCV 2023): one token steered by a classifier."""
