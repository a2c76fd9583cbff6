//! The typed failure vocabulary.
//!
//! Every failure a job can end with has one [`ErrorKind`]. The kind travels in
//! the error result (`"error":{"kind":"decode",…}`), labels the
//! `scorefleet_jobs_failed_total` metric, and decides whether the worker
//! retries ([`Retry::Retryable`]) or records a final outcome
//! ([`Retry::Permanent`]).

use serde::{Deserialize, Serialize};
use std::fmt;

/// Whether a failure may go away if the same work is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retry {
    /// Throttling, 5xx, timeouts, connection resets: back off and try again.
    Retryable,
    /// The input itself is bad: record the failure, send the error result.
    Permanent,
}

/// Why a job failed. Serialised in snake_case in result messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The message could not be parsed into a valid job.
    InvalidMessage,
    /// The object or page does not exist (S3 NoSuchKey, HTTP 404/410).
    FetchNotFound,
    /// The fetch was refused for good (403, bad bucket, redirect loop).
    FetchDenied,
    /// The fetch failed in a way that may be transient (5xx, reset, timeout).
    FetchFailed,
    /// The URL resolves to an address the worker must never contact
    /// (loopback, private, link-local, …) or is outside the allowlist.
    BlockedUrl,
    /// The encoded object, or its decoded pixel count, exceeds a limit; or
    /// the result would pass the limit of a result message.
    TooLarge,
    /// The bytes are not an image the worker can decode.
    Decode,
    /// The model failed on this input.
    Inference,
    /// An unexpected failure inside the worker.
    Internal,
}

impl ErrorKind {
    /// Every kind, for exhaustive tests and metric pre-registration.
    pub const ALL: [ErrorKind; 9] = [
        ErrorKind::InvalidMessage,
        ErrorKind::FetchNotFound,
        ErrorKind::FetchDenied,
        ErrorKind::FetchFailed,
        ErrorKind::BlockedUrl,
        ErrorKind::TooLarge,
        ErrorKind::Decode,
        ErrorKind::Inference,
        ErrorKind::Internal,
    ];

    /// The wire name, as in `"kind":"fetch_not_found"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidMessage => "invalid_message",
            ErrorKind::FetchNotFound => "fetch_not_found",
            ErrorKind::FetchDenied => "fetch_denied",
            ErrorKind::FetchFailed => "fetch_failed",
            ErrorKind::BlockedUrl => "blocked_url",
            ErrorKind::TooLarge => "too_large",
            ErrorKind::Decode => "decode",
            ErrorKind::Inference => "inference",
            ErrorKind::Internal => "internal",
        }
    }

    /// Whether trying the same job again may succeed.
    ///
    /// Only `fetch_failed` and `internal` are retryable: a worker retries them
    /// in process with backoff, and once the retry budget is spent the message
    /// is left to the queue's redrive policy (and so, eventually, the DLQ).
    pub fn retry(self) -> Retry {
        match self {
            ErrorKind::FetchFailed | ErrorKind::Internal => Retry::Retryable,
            _ => Retry::Permanent,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure of one job: its kind and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct JobError {
    /// What class of failure this is.
    pub kind: ErrorKind,
    /// What happened, for people; never parsed.
    pub message: String,
}

impl JobError {
    /// A failure of the given kind.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    /// Shorthand for `self.kind.retry()`.
    pub fn retry(&self) -> Retry {
        self.kind.retry()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_round_trip_through_serde() {
        for kind in ErrorKind::ALL {
            let json = serde_json::to_string(&kind).expect("serialise");
            assert_eq!(json, format!("\"{}\"", kind.as_str()));
            let back: ErrorKind = serde_json::from_str(&json).expect("parse");
            assert_eq!(back, kind);
        }
    }

    #[test]
    fn only_transient_kinds_are_retryable() {
        let retryable: Vec<_> = ErrorKind::ALL.into_iter().filter(|k| k.retry() == Retry::Retryable).collect();
        assert_eq!(retryable, vec![ErrorKind::FetchFailed, ErrorKind::Internal]);
    }
}
