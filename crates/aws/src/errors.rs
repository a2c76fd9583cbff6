//! SDK errors mapped to [`ServiceError`]: retryable or not.
//!
//! The SDK has already retried a request (standard retry mode) before an error
//! reaches this module; what is left is classified so the caller knows
//! whether its own backoff may help:
//! - throttling codes, HTTP 429 and 5xx, timeouts, dispatch (connection/IO)
//!   failures and unreadable responses → [`ServiceError::Transient`];
//! - everything else (missing resources, access denied, validation, bad
//!   configuration) → [`ServiceError::Permanent`].

use aws_sdk_sqs::error::ProvideErrorMetadata;
use scorefleet_core::traits::ServiceError;

/// smithy's error type; the three SDK crates share it (same
/// `aws-smithy-runtime-api`), so one mapping serves them all.
pub use aws_sdk_sqs::error::SdkError;

/// Error codes that mean "slow down or try again" across SQS, DynamoDB and S3.
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "ProvisionedThroughputExceededException",
    "RequestLimitExceeded",
    "LimitExceededException",
    "BandwidthLimitExceeded",
    "SlowDown",
    "PriorRequestNotComplete",
    "TransactionInProgressException",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "RequestTimeout",
    "RequestTimeoutException",
    "KMS.ThrottlingException",
    "AWS.SimpleQueueService.ServiceUnavailable",
];

/// Whether an error code (from a response or a batch entry) is a throttling
/// or server-side code worth retrying.
pub fn is_transient_code(code: &str) -> bool {
    TRANSIENT_CODES.contains(&code)
}

/// The service's error code, if the service answered with one.
pub fn error_code<E: ProvideErrorMetadata>(err: &SdkError<E>) -> Option<&str> {
    match err {
        SdkError::ServiceError(ctx) => ctx.err().code(),
        _ => None,
    }
}

/// The HTTP status of the service's answer, if there was one.
pub fn http_status<E>(err: &SdkError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// Whether retrying the request later may succeed.
pub fn is_transient<E: ProvideErrorMetadata>(err: &SdkError<E>) -> bool {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => true,
        SdkError::ServiceError(_) => {
            let status = http_status(err).unwrap_or(0);
            status == 429 || status >= 500 || error_code(err).is_some_and(is_transient_code)
        }
        // ConstructionFailure (a request we could not build) and any future
        // variant: retrying the same request cannot help.
        _ => false,
    }
}

/// Longest error description kept (results and logs carry it).
const DESCRIBE_MAX: usize = 400;

/// A one-line description of an SDK error: the service's code, message and
/// HTTP status, or the chain of causes of a failure to get an answer. Not
/// the SDK's `DisplayErrorContext`, which appends the Debug form of the raw
/// response (headers, body, request ids: about 2 KB per failed GetObject,
/// copied into every error result).
pub fn describe<E>(err: &SdkError<E>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let mut out = match err {
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            match (ctx.err().code(), ctx.err().message()) {
                (Some(code), Some(message)) => format!("{code}: {message} (HTTP {status})"),
                (Some(code), None) => format!("{code} (HTTP {status})"),
                _ => format!("HTTP {status}: {}", ctx.err()),
            }
        }
        other => {
            let mut s = other.to_string();
            let mut cause = std::error::Error::source(other);
            while let Some(c) = cause {
                let text = c.to_string();
                if !s.ends_with(&text) {
                    s.push_str(": ");
                    s.push_str(&text);
                }
                cause = c.source();
            }
            s
        }
    };
    if out.len() > DESCRIBE_MAX {
        let cut = (0..=DESCRIBE_MAX).rev().find(|i| out.is_char_boundary(*i)).unwrap_or(0);
        out.truncate(cut);
        out.push('…');
    }
    out
}

/// Maps an SDK error for operation `op` to a [`ServiceError`].
pub fn classify<E>(op: &'static str, err: &SdkError<E>) -> ServiceError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let message = describe(err);
    if is_transient(err) { ServiceError::Transient { op, message } } else { ServiceError::Permanent { op, message } }
}

/// A permanent error for something this crate found wrong in a response or a
/// request it could not build.
pub(crate) fn permanent(op: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::Permanent { op, message: message.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_and_server_codes_are_transient() {
        for code in ["ThrottlingException", "ProvisionedThroughputExceededException", "SlowDown", "InternalError"] {
            assert!(is_transient_code(code), "{code}");
        }
        for code in ["AccessDenied", "NoSuchKey", "ReceiptHandleIsInvalid", "ValidationException", ""] {
            assert!(!is_transient_code(code), "{code}");
        }
    }
}
