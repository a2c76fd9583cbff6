//! # scorefleet-core
//!
//! The pure contracts every other scorefleet crate builds on. Nothing here
//! talks to AWS or runs a model; everything here is deterministic and tested
//! hard.
//!
//! ## Layout
//! - [`job`]: the versioned job message on the input queue, its strict parser,
//!   and [`JobId`] derivation.
//! - [`result`]: the result message on the output queue.
//! - [`error`]: [`ErrorKind`], the typed failure vocabulary shared by results,
//!   metrics and retry decisions.
//! - [`batch`]: the batching policy (max items, max wait, never past the
//!   earliest lease deadline) as a pure state machine.
//! - [`lease`]: the dedup/lease protocol (claim, renew, finish, release,
//!   take-over, fencing) as pure transitions over an outcome record.
//! - [`traits`]: the ports the worker is written against (queue, result sink,
//!   outcome store, image store, predictor); `scorefleet-aws` and
//!   `scorefleet-model` implement them.
#![warn(missing_docs)]

pub mod batch;
pub mod error;
pub mod job;
pub mod lease;
pub mod result;
pub mod traits;

pub use error::{ErrorKind, Retry};
pub use job::{Image, JobId, JobMessage, JobUrl, ParseError};
pub use result::{ErrorInfo, ImageResult, ModelRef, Prediction, ResultMessage, ResultStatus};
