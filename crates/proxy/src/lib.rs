//! pikafs proxy: a RESP proxy in front of one volume's kv nodes.
//!
//! (Skeleton: being written.)
