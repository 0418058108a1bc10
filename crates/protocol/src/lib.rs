//! Switchyard's wire contract, in Rust: every subject, stream, bucket and
//! message shape of `docs/CONTRACT.md`, and nothing else. No I/O, so it is
//! cheap to depend on and fast to test.
//!
//! Services and tests use these constants; a subject string written anywhere
//! else is a bug.

pub mod accounts;
pub mod codegen;
pub mod email;
pub mod error;
pub mod logs;
pub mod manifest;
pub mod math;
pub mod micro;
pub mod names;
pub mod payment;
pub mod registry;
pub mod schema;
pub mod stocks;
pub mod subjects;
pub mod token;

pub use error::{ErrorBody, ErrorCode, ErrorDetail, ServiceError};
