"""Datasets for model builders: de-identification and exports."""
