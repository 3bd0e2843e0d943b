"""Readers for HanCo and FreiHAND in their real on-disk formats, and the synthetic generator."""
