//! pikafs-chunkserver (in progress)
