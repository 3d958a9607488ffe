"""Incremental indexing of each patient's record into Milvus, and the contextual query."""
