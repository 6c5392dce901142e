//! pikafs-volume (in progress)
