//! The worker binary's start-up refusals, with nothing running: an invalid
//! setting is refused with one line naming the flag and the rule, and a
//! fatal error is reported once.

use std::process::{Command, Output};

fn worker(extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_scorefleet-worker"))
        .args(["--input-queue-url", "http://127.0.0.1:1/q/in", "--output-queue-url", "http://127.0.0.1:1/q/out"])
        .args(["--table", "t", "--http-addr", "127.0.0.1:0"])
        .args(extra)
        // Nothing here may reach a network: a closed local port for AWS.
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env_remove("SCOREFLEET_LOG")
        .output()
        .expect("run scorefleet-worker")
}

fn stderr_lines(o: &Output) -> Vec<String> {
    String::from_utf8_lossy(&o.stderr).lines().map(str::to_owned).collect()
}

#[test]
fn invalid_settings_are_refused_at_start_with_one_line_naming_the_flag() {
    for (args, want) in [
        (&["--lease-seconds", "1"][..], "error: --lease-seconds: must be at least 2"),
        (&["--wait-seconds", "21"][..], "error: --wait-seconds: must be at most 20"),
        (&["--log", "info,x=nonsense-level"][..], "error: --log: invalid filter"),
    ] {
        let out = worker(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let lines = stderr_lines(&out);
        assert_eq!(lines.len(), 1, "{args:?}: one line, got {lines:?}");
        assert!(lines[0].starts_with(want), "{args:?}: {lines:?}");
    }
}

#[test]
fn a_fatal_error_is_reported_once() {
    let out = worker(&["--model-manifest", "no/such/manifest.json"]);
    assert_eq!(out.status.code(), Some(1));
    let lines = stderr_lines(&out);
    let fatal: Vec<&String> = lines.iter().filter(|l| l.contains("no/such/manifest.json")).collect();
    assert_eq!(fatal.len(), 1, "the fatal error once, got {lines:?}");
    assert!(fatal[0].contains("ERROR"), "{fatal:?}");
}
