//! AWS configuration: the standard chain only, plus one switch for S3.
//!
//! [`AwsConfig::load`] uses `aws_config::defaults(BehaviorVersion::latest())`,
//! which honours `AWS_ENDPOINT_URL` (and the per-service
//! `AWS_ENDPOINT_URL_SQS`, …), `AWS_REGION`, `AWS_PROFILE`, the credentials
//! chain and the config files. Nothing else is read, so pointing scorefleet at
//! real AWS is unsetting `AWS_ENDPOINT_URL`.
//!
//! S3 addressing: virtual-hosted style (`bucket.host`) cannot work against an
//! emulator on `127.0.0.1`, so path style is on when `SCOREFLEET_S3_PATH_STYLE`
//! says so (`1`/`true`), off when it says `0`/`false`, and otherwise on exactly
//! when an endpoint override is set.

use aws_config::{BehaviorVersion, SdkConfig};

/// The environment variable that forces S3 path-style addressing on or off.
pub const PATH_STYLE_ENV: &str = "SCOREFLEET_S3_PATH_STYLE";

/// A loaded SDK configuration and the clients built from it.
#[derive(Debug, Clone)]
pub struct AwsConfig {
    /// What the standard chain resolved (region, credentials, endpoint).
    pub sdk: SdkConfig,
    /// Whether S3 requests use `host/bucket/key` rather than `bucket.host/key`.
    pub s3_path_style: bool,
}

impl AwsConfig {
    /// Loads the configuration from the environment and profile files.
    pub async fn load() -> Self {
        let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
        let endpoint_set = ["AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]
            .iter()
            .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty()));
        let s3_path_style = path_style(std::env::var(PATH_STYLE_ENV).ok().as_deref(), endpoint_set);
        Self { sdk, s3_path_style }
    }

    /// Wraps an already-built configuration (tests, custom chains).
    pub fn from_sdk(sdk: SdkConfig, s3_path_style: bool) -> Self {
        Self { sdk, s3_path_style }
    }

    /// An SQS client.
    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk)
    }

    /// A DynamoDB client.
    pub fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk)
    }

    /// An S3 client, path-style when configured.
    pub fn s3(&self) -> aws_sdk_s3::Client {
        let conf = aws_sdk_s3::config::Builder::from(&self.sdk).force_path_style(self.s3_path_style).build();
        aws_sdk_s3::Client::from_conf(conf)
    }
}

/// The path-style decision: an explicit setting wins, else on iff an endpoint
/// override is set. Unrecognised values fall back to the default rather than
/// failing start-up.
pub fn path_style(setting: Option<&str>, endpoint_set: bool) -> bool {
    match setting.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("1" | "true" | "yes" | "on") => true,
        Some("0" | "false" | "no" | "off") => false,
        _ => endpoint_set,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_style_follows_setting_then_endpoint() {
        assert!(path_style(None, true));
        assert!(!path_style(None, false));
        assert!(path_style(Some("1"), false));
        assert!(path_style(Some("TRUE"), false));
        assert!(!path_style(Some("0"), true));
        assert!(!path_style(Some("false"), true));
        assert!(path_style(Some("garbage"), true));
        assert!(!path_style(Some(""), false));
    }
}
