//! # scorefleet-worker
//!
//! The fleet's unit: long-polls SQS, claims each job in DynamoDB, fetches and
//! decodes its image, batches images across messages, runs the burn model on
//! a dedicated thread, records the outcome (fenced), sends one result per job
//! and deletes the input messages. Generic over the `scorefleet-core` ports,
//! so the same pipeline runs on the AWS adapters and on in-memory fakes.
//!
//! # Layout
//!
//! The modules follow a job through the pipeline; every arrow is a bounded
//! channel, so memory is set by configuration, not by queue depth:
//!
//! ```text
//! receive → dedup → fetch (+ decode) → batch → infer → record → emit
//!                         ↑ lease keeps every claimed job alive ↑
//! ```
//!
//! - [`pipeline`]: the wiring alone: the channels between the stages, `run`.
//! - [`settings`], [`ctx`] (ports and shared state), `job` (the work items
//!   that travel between the stages), `flow` (channel and batcher plumbing):
//!   what the stages share; none of them imports a stage.
//! - [`supervise`]: every task and thread watched; a fault stops the worker.
//! - [`receive`]: N concurrent long polls.
//! - [`dedup`]: parse and claim (or, in finish-only mode, one batched read);
//!   Done → re-send and delete, Busy → leave.
//! - [`mode`]: the dedup mode (claim, finish-only, or auto by CPU cost).
//! - [`fetch`]: job URL → bytes: S3 (bucket allowlist) and `http(s)` behind
//!   the SSRF guard ([`fetch::ssrf`], [`fetch::http`]); the fetch stage.
//! - [`decode`]: bytes → model input on the blocking pool.
//! - [`batch`]: async driver of the core batching policy.
//! - [`infer`]: the inference thread that owns the predictor.
//! - [`record`]: the fenced finish (finish-only: the conditional finish; a
//!   loser re-sends the stored result).
//! - [`emit`]: results ×10, then deletes ×10.
//! - [`lease`]: the in-flight registry and the lease keeper (SQS visibility
//!   and DynamoDB lease extended together; a lost lease is abandoned).
//! - [`shutdown`]: signals, drain limit, giving back unstarted work.
//! - [`metrics`], [`probe`]: Prometheus counters; the probe server
//!   (`/healthz`, `/readyz`, `/metrics`).
//! - [`fault`]: faults injected on purpose by tests.
#![warn(missing_docs)]

pub mod batch;
pub mod cli;
pub mod ctx;
pub mod decode;
pub mod dedup;
pub mod emit;
pub mod fault;
pub mod fetch;
mod flow;
pub mod infer;
mod job;
pub mod lease;
pub mod metrics;
pub mod mode;
pub mod pipeline;
pub mod probe;
pub mod receive;
pub mod record;
pub mod settings;
pub mod shutdown;
pub mod supervise;

#[cfg(test)]
mod tests;
