//! One rule for every emulator suite (aws, producer, worker): skip with a
//! line when no emulator is configured, fail when CI requires one.

/// Whether this emulator test must be skipped: no emulator is configured
/// (`AWS_ENDPOINT_URL` unset), so plain `cargo test` passes the pure tests.
/// The suite says so once, on stderr, with how to run it. With
/// `SCOREFLEET_REQUIRE_EMULATOR` set (CI, `make test`) a missing emulator is
/// a failure instead: these tests must never pass there by skipping.
pub fn skip() -> bool {
    if std::env::var("AWS_ENDPOINT_URL").is_ok_and(|u| !u.is_empty()) {
        return false;
    }
    let how = concat!(
        "these emulator tests need the local AWS emulator: run `make test` (or `scripts/with-stack.sh cargo test -p ",
        env!("CARGO_PKG_NAME"),
        "`)"
    );
    if std::env::var_os("SCOREFLEET_REQUIRE_EMULATOR").is_some() {
        panic!("AWS_ENDPOINT_URL is not set and SCOREFLEET_REQUIRE_EMULATOR is: {how}");
    }
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        use std::io::Write as _;
        // Straight to stderr: the test harness captures `eprintln!`.
        let _ = writeln!(std::io::stderr(), "skipped {}: {how}", env!("CARGO_CRATE_NAME"));
    });
    true
}
