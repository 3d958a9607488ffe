"""Streaming normalization stage and the contracts every stage shares.

Kept free of FastStream/aiokafka imports so that importing the contracts
(`stream.events`, `stream.settings`, `stream.errors`, `stream.hl7v2`) is cheap.
"""
