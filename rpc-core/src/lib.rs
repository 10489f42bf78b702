//! # rpc-core: calls to frames and back
//!
//! Work in progress: the error-response body format.

pub mod error_body;

pub use error_body::{ErrorBody, ErrorCode};
