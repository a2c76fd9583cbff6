//! The code under fuzz, for the targets in `fuzz_targets/`.
//!
//! `scorefleet-core` is a plain dependency. The manifest reader
//! (`scorefleet-producer`'s `source.rs`) and decode + preprocess
//! (`scorefleet-model`'s `preprocess.rs`, with the `manifest.rs` and
//! `error.rs` it uses) are compiled here from those crates' own source files
//! — the same files, not copies — because depending on the crates would
//! also build the AWS SDK and burn under sanitizer instrumentation, which
//! takes the better part of an hour on two cores, for code that none of the
//! fuzzed functions call. If one of these files gains a dependency, add it to
//! `fuzz/Cargo.toml` (the build says which); if it gains a `crate::` import,
//! add that module here the same way.
#![allow(dead_code, missing_docs, unused_imports)]

#[path = "../../crates/model/src/error.rs"]
pub mod error;
#[path = "../../crates/model/src/manifest.rs"]
pub mod manifest;
#[path = "../../crates/model/src/preprocess.rs"]
pub mod preprocess;
#[path = "../../crates/producer/src/source.rs"]
pub mod source;
