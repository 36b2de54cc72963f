"""Datasets to WebDataset shards: sources, safe extraction, downloads, the shard writer and its manifest."""
