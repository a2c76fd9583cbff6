//! The job message parser (`JobMessage::parse`), fed any body.
//!
//! Besides "never panics", it checks what the worker relies on:
//! - a parsed job re-serialises to a body within the size limit that parses
//!   back to the same job (the producer writes with `to_json`);
//! - an error's recovered `job_id` is itself a valid id (the worker files an
//!   `invalid_message` result under it);
//! - an accepted URL obeys the documented rules (scheme, length, no
//!   credentials, a host).
#![no_main]

use libfuzzer_sys::fuzz_target;
use scorefleet_core::job::{JobId, JobMessage, JobUrl, MAX_BODY_BYTES, MAX_IMAGES_PER_JOB, MAX_URL_LEN};

fuzz_target!(|data: &[u8]| {
    // SQS bodies are strings; invalid UTF-8 never reaches the parser, but the
    // lossy form still gives the fuzzer's byte mutations something to parse.
    let body = String::from_utf8_lossy(data);
    match JobMessage::parse(&body) {
        Ok(job) => {
            let wire = job.to_json();
            assert!(wire.len() <= MAX_BODY_BYTES, "a valid job serialises to {} bytes", wire.len());
            let again = JobMessage::parse(&wire).expect("a parsed job must parse again from its own wire form");
            assert_eq!(again, job, "round trip changed the job");
            assert!((1..=MAX_IMAGES_PER_JOB).contains(&job.images.len()));
            assert!(job.multi || job.images.len() == 1, "a v1 job has one image");
            for image in &job.images {
                assert!(image.url_raw.len() <= MAX_URL_LEN);
                if let JobUrl::Http(u) = &image.url {
                    assert!(matches!(u.scheme(), "http" | "https"));
                    assert!(u.username().is_empty() && u.password().is_none(), "credentials accepted: {u}");
                    assert!(u.host().is_some());
                }
            }
        }
        Err(e) => {
            if let Some(id) = e.job_id {
                JobId::parse(id.as_str()).expect("a recovered job id must be a valid id");
            }
        }
    }
});
