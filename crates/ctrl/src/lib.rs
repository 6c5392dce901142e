//! pikafs-ctrl (in progress)
