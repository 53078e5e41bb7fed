//! Memory-mapped token shards on disk.
