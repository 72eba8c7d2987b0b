"""Data: the shard format, shard writing, and the DALI / PyTorch loaders that turn shards into views."""
