//! Wire formats shared by every pikafs service.
//!
//! This crate sits at the bottom of the workspace: every other crate depends
//! on it and it depends on none of them. It holds
//!
//! - [`frame`]: the length-prefixed frame codec of the data path, with its
//!   frame-size limit;
//! - [`msg`]: the data-path requests and responses carried in those frames
//!   (client IO, raft traffic between chunkservers, snapshot copy);
//! - [`error`]: the stable error codes a chunkserver answers with;
//! - [`ids`]: ids and the fixed geometry (chunk and sector sizes);
//! - [`ctrlpb`]: the control-plane gRPC schema (`proto/ctrl.proto`);
//! - [`metrics_http`]: the Prometheus endpoint every service exposes.
//!
//! Invariants: decoding never panics and never allocates more than the frame
//! limit, whatever bytes a peer sends; every malformed input becomes a
//! [`error::ProtoError`].

pub mod error;
pub mod frame;
pub mod ids;
pub mod metrics_http;
pub mod msg;
pub mod resp;

/// Generated types and client/server stubs for the ctrl gRPC service.
#[allow(clippy::all, missing_docs)]
pub mod ctrlpb {
    tonic::include_proto!("pikafs.ctrl");
}

pub use error::{ErrorCode, ProtoError};
pub use frame::{Frame, FrameCodec, MAX_FRAME_LEN};
pub use ids::*;
pub use msg::{Request, Response};
