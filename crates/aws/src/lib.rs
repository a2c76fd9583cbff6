//! # scorefleet-aws
//!
//! The AWS adapters behind `scorefleet-core`'s ports, written against the
//! standard AWS configuration chain only, so the same code talks to real AWS
//! or to the local emulator (`AWS_ENDPOINT_URL`).
//!
//! ## Layout
//! - [`config`]: loads the [`aws_config::SdkConfig`] and builds the three
//!   clients (S3 with path-style addressing when an endpoint is overridden).
//! - [`sqs`]: [`SqsQueue`], the input queue ([`JobQueue`]) and the output
//!   side ([`MessageSink`]): long-poll receive, batched send / delete /
//!   change-visibility with per-entry retries and failure reports.
//! - [`dynamo`]: [`DynamoOutcomeStore`], the dedup table ([`OutcomeStore`]):
//!   each lease transition of `scorefleet_core::lease` as one conditional
//!   `UpdateItem`; [`dynamo::runs`]: run status counted by a query on the
//!   table's `by_run` index, and the run record the producer writes.
//! - [`s3`]: [`S3Store`], images and weights ([`ObjectStore`]): capped get,
//!   put, paginated list.
//! - [`provision`]: idempotent creation of the queues, table and bucket.
//! - [`errors`]: SDK errors mapped to retryable or permanent
//!   [`ServiceError`]s.
//! - [`metrics`]: [`ApiCounters`], AWS requests counted per API.
//!
//! ## Wiring
//!
//! ```no_run
//! use scorefleet_aws::{ApiCounters, AwsConfig, DynamoOutcomeStore, S3Store, SqsQueue, StackSpec, provision};
//! use std::sync::Arc;
//!
//! # async fn wire() -> Result<(), scorefleet_core::traits::ServiceError> {
//! let cfg = AwsConfig::load().await;
//! let counters = Arc::new(ApiCounters::new());
//! let stack = provision(&cfg, &StackSpec::named("scorefleet-dev"), &counters).await?;
//! let jobs = SqsQueue::new(cfg.sqs(), &stack.input_queue_url, counters.clone());
//! let results = SqsQueue::new(cfg.sqs(), &stack.output_queue_url, counters.clone());
//! let outcomes = DynamoOutcomeStore::new(cfg.dynamodb(), &stack.table, counters.clone());
//! let images = S3Store::new(cfg.s3(), counters.clone());
//! # let _ = (jobs, results, outcomes, images);
//! # Ok(())
//! # }
//! ```
//!
//! [`JobQueue`]: scorefleet_core::traits::JobQueue
//! [`MessageSink`]: scorefleet_core::traits::MessageSink
//! [`OutcomeStore`]: scorefleet_core::traits::OutcomeStore
//! [`ObjectStore`]: scorefleet_core::traits::ObjectStore
//! [`ServiceError`]: scorefleet_core::traits::ServiceError
#![warn(missing_docs)]

pub mod config;
pub mod dynamo;
pub mod errors;
pub mod metrics;
pub mod provision;
pub mod s3;
pub mod sqs;

pub mod backoff;

pub use backoff::{Backoff, retry};
pub use config::AwsConfig;
pub use dynamo::{DynamoOutcomeStore, RunStatus};
pub use metrics::ApiCounters;
pub use provision::{Provisioned, StackSpec, provision};
pub use s3::{KeyPages, S3Store};
pub use sqs::SqsQueue;
