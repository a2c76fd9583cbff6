//! The producer's manifest reader (`source::read_manifest`: plain lines, CSV,
//! JSONL) and the step that turns each entry into a job (`Entry::into_job`).
//! The first input byte picks the format; the rest is the manifest.
//!
//! Besides "never panics", it checks:
//! - every item names a line (≥ 1), in order;
//! - a plain-lines entry is a trimmed, non-empty, non-comment URL;
//! - an entry that becomes a job gives a body the worker parses back to the
//!   same job: the producer never enqueues what the fleet would refuse.
#![no_main]

use libfuzzer_sys::fuzz_target;
use scorefleet_core::job::JobMessage;
use scorefleet_fuzz::source::{Format, read_manifest};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, manifest)) = data.split_first() else { return };
    let format = match selector % 3 {
        0 => Format::Lines,
        1 => Format::Csv,
        _ => Format::Jsonl,
    };
    let mut last_line = 0;
    for item in read_manifest(std::io::Cursor::new(manifest.to_vec()), format) {
        let line = item.as_ref().map_or_else(|e| e.line, |e| e.line);
        assert!(line >= 1, "{format:?}: an item without a line number: {item:?}");
        assert!(line >= last_line, "{format:?}: line {line} after line {last_line}");
        last_line = line;
        let Ok(entry) = item else { continue };
        if format == Format::Lines {
            assert!(!entry.url.is_empty() && entry.url.trim() == entry.url && !entry.url.starts_with('#'));
        }
        if let Ok(job) = entry.into_job("fuzz-run") {
            let back = JobMessage::parse(&job.to_json()).expect("the worker must accept what the producer sends");
            assert_eq!(back, job);
        }
    }
});
