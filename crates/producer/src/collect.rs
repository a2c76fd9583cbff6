//! `collect`: drains the output queue into JSONL and CSV files.
//!
//! The JSONL file holds each result message as it came; the CSV file one row
//! per image (a `v: 2` result of several images gives one row per image,
//! numbered in the `image` column).
//!
//! Results arrive at least once, so the same `job_id` can come twice; the
//! first copy is written and later copies are dropped (the set of ids seen is
//! preloaded from an existing JSONL file, so repeated `collect` runs into the
//! same file stay duplicate-free). A message is deleted from the queue only
//! after the lines it produced are flushed and `fsync`ed: a crash between the
//! two re-delivers it, and the dedup drops the copy.
//!
//! Memory: the ids seen are kept as 128-bit fingerprints ([`SeenIds`]), 17–36
//! bytes per distinct job id with the hash table's slack, whatever the id's
//! length; everything else is one receive batch.

use crate::progress::Progress;
use scorefleet_core::result::{ResultMessage, ResultStatus};
use scorefleet_core::traits::JobQueue;
use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where and how long to collect.
#[derive(Debug, Clone)]
pub struct Options {
    /// Results, one JSON object per line (appended).
    pub jsonl: PathBuf,
    /// The same results as CSV (appended; header written when new).
    pub csv: Option<PathBuf>,
    /// Messages the file could not parse go here, raw, one per line.
    pub rejects: PathBuf,
    /// Stop after this many receives in a row return nothing.
    pub idle_polls: u32,
    /// Long-poll wait per receive.
    pub wait: Duration,
    /// Stop once this many new results have been written.
    pub max_results: Option<u64>,
}

/// What a collect run did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Summary {
    /// Messages received.
    pub received: u64,
    /// New results written.
    pub written: u64,
    /// Images in them (equal to `written` for one-image jobs).
    pub images: u64,
    /// Copies of results already written, dropped.
    pub duplicates: u64,
    /// Messages that were not valid results (kept in the rejects file).
    pub rejected: u64,
    /// Messages deleted from the queue.
    pub deleted: u64,
    /// Messages whose delete failed (they will come back and be dropped as
    /// duplicates).
    pub delete_failed: u64,
}

/// Errors that stop a collect run.
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// A local file could not be read or written; nothing unwritten was deleted.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The queue failed after the adapter's retries.
    #[error(transparent)]
    Service(#[from] scorefleet_core::traits::ServiceError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CollectError + '_ {
    move |source| CollectError::Io { path: path.to_owned(), source }
}

/// The CSV columns, in order.
pub const CSV_HEADER: &str = "job_id,run_id,url,status,label,score,error_kind,error_message,model,model_version,attempts,worker,completed_at,latency_ms,true_label,image";

/// The job ids already written, as the first 128 bits of SHA-256 of each id.
/// A set of 32-character id strings costs ~70 bytes per id, fingerprints
/// 17–36; two distinct ids share a fingerprint with a probability of about
/// n²/2¹²⁹, far below any other failure of a run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SeenIds(HashSet<u128>);

impl SeenIds {
    fn key(id: &str) -> u128 {
        let d = Sha256::digest(id.as_bytes());
        let mut b = [0u8; 16];
        b.copy_from_slice(&d[..16]);
        u128::from_be_bytes(b)
    }

    /// Whether `id` was seen.
    pub fn contains(&self, id: &str) -> bool {
        self.0.contains(&Self::key(id))
    }

    /// Records `id`; false if it was already there.
    pub fn insert(&mut self, id: &str) -> bool {
        self.0.insert(Self::key(id))
    }

    /// How many distinct ids were seen.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether none was seen.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Reads the job ids already in a JSONL results file.
pub fn ids_in(path: &Path) -> Result<SeenIds, CollectError> {
    let mut ids = SeenIds::default();
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ids),
        Err(e) => return Err(io(path)(e)),
    };
    for line in BufReader::new(file).lines() {
        let line = line.map_err(io(path))?;
        if let Ok(r) = ResultMessage::parse(&line) {
            ids.insert(&r.job_id);
        }
    }
    Ok(ids)
}

/// Drains `queue` until it stays empty for `idle_polls` receives, showing
/// the counts on `progress`.
pub async fn run<Q: JobQueue>(queue: &Q, opts: &Options, progress: &Progress) -> Result<Summary, CollectError> {
    let mut seen = ids_in(&opts.jsonl)?;
    let open = |p: &Path| OpenOptions::new().create(true).append(true).open(p).map_err(io(p));
    let jsonl_file = open(&opts.jsonl)?;
    let mut jsonl = BufWriter::new(jsonl_file);
    let mut csv = match &opts.csv {
        Some(p) => {
            let is_new = std::fs::metadata(p).map(|m| m.len() == 0).unwrap_or(true);
            let mut w = BufWriter::new(open(p)?);
            if is_new {
                writeln!(w, "{CSV_HEADER}").map_err(io(p))?;
            }
            Some((p.clone(), w))
        }
        None => None,
    };
    let mut rejects: Option<BufWriter<File>> = None;
    let mut summary = Summary::default();
    let mut idle = 0;
    while idle < opts.idle_polls && opts.max_results.is_none_or(|m| summary.written < m) {
        let batch = queue.receive(10, opts.wait).await?;
        if batch.is_empty() {
            idle += 1;
            continue;
        }
        idle = 0;
        summary.received += batch.len() as u64;
        for msg in &batch {
            match ResultMessage::parse(&msg.body) {
                Ok(r) if seen.contains(&r.job_id) => summary.duplicates += 1,
                Ok(r) => {
                    writeln!(jsonl, "{}", msg.body.trim_end()).map_err(io(&opts.jsonl))?;
                    let multi = !r.images.is_empty();
                    seen.insert(&r.job_id);
                    let rows = r.per_image();
                    if let Some((p, w)) = csv.as_mut() {
                        for (i, row) in rows.iter().enumerate() {
                            writeln!(w, "{}", csv_row(row, multi.then_some(i))).map_err(io(p))?;
                        }
                    }
                    summary.written += 1;
                    summary.images += rows.len() as u64;
                }
                Err(_) => {
                    let w = match rejects.as_mut() {
                        Some(w) => w,
                        None => rejects.insert(BufWriter::new(open(&opts.rejects)?)),
                    };
                    writeln!(w, "{}", msg.body.replace('\n', "\\n")).map_err(io(&opts.rejects))?;
                    summary.rejected += 1;
                }
            }
        }
        // Durable before delete.
        sync(&mut jsonl, &opts.jsonl)?;
        if let Some((p, w)) = csv.as_mut() {
            sync(w, p)?;
        }
        if let Some(w) = rejects.as_mut() {
            sync(w, &opts.rejects)?;
        }
        let handles: Vec<String> = batch.iter().map(|m| m.receipt_handle.clone()).collect();
        let failed = queue.delete(&handles).await?;
        summary.delete_failed += failed.len() as u64;
        summary.deleted += (handles.len() - failed.len()) as u64;
        progress.show(summary.received, "msg", || {
            format!(
                "received {}  written {}  duplicates {}  rejected {}",
                summary.received, summary.written, summary.duplicates, summary.rejected
            )
        });
    }
    Ok(summary)
}

fn sync(w: &mut BufWriter<File>, path: &Path) -> Result<(), CollectError> {
    w.flush().map_err(io(path))?;
    w.get_ref().sync_data().map_err(io(path))
}

/// One CSV row for a one-image result, or for image `image` of a `v: 2`
/// result flattened by [`ResultMessage::per_image`] (RFC 4180 quoting where
/// needed).
pub fn csv_row(r: &ResultMessage, image: Option<usize>) -> String {
    let top = r.top();
    let err = r.error.as_ref();
    let true_label = r.attrs.as_ref().and_then(|a| a.get("label")).map(|v| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    });
    let fields = [
        r.job_id.clone(),
        r.run_id.clone(),
        r.url.clone(),
        match r.status {
            ResultStatus::Ok => "ok".into(),
            ResultStatus::Error => "error".into(),
        },
        top.map(|p| p.label.clone()).unwrap_or_default(),
        top.map(|p| format!("{:.6}", p.score)).unwrap_or_default(),
        err.map(|e| e.kind.as_str().to_owned()).unwrap_or_default(),
        err.map(|e| e.message.clone()).unwrap_or_default(),
        r.model.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
        r.model.as_ref().map(|m| m.version.clone()).unwrap_or_default(),
        r.attempts.to_string(),
        r.worker.clone(),
        r.completed_at.clone(),
        r.latency_ms.map(|l| l.to_string()).unwrap_or_default(),
        true_label.unwrap_or_default(),
        image.map(|i| i.to_string()).unwrap_or_default(),
    ];
    fields.iter().map(|f| quote(f)).collect::<Vec<_>>().join(",")
}

fn quote(field: &str) -> String {
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use scorefleet_core::traits::{EntryFailure, Received, ServiceError};
    use std::sync::Mutex;

    /// An in-memory queue handing out pre-set batches, recording deletes.
    struct Queue {
        batches: Mutex<Vec<Vec<Received>>>,
        deleted: Mutex<Vec<String>>,
    }

    impl JobQueue for Queue {
        async fn receive(&self, _max: usize, _wait: Duration) -> Result<Vec<Received>, ServiceError> {
            Ok(self.batches.lock().expect("lock").pop().unwrap_or_default())
        }
        async fn delete(&self, handles: &[String]) -> Result<Vec<EntryFailure>, ServiceError> {
            self.deleted.lock().expect("lock").extend(handles.iter().cloned());
            Ok(vec![])
        }
        async fn change_visibility(&self, _: &[(String, Duration)]) -> Result<Vec<EntryFailure>, ServiceError> {
            Ok(vec![])
        }
    }

    fn result(id: &str) -> String {
        format!(
            r#"{{"v":1,"job_id":"{id}","run_id":"r","url":"s3://b/{id}","status":"ok","model":{{"name":"digits","version":"sha256:x"}},"top_k":[{{"label":"7","score":0.9}}],"attempts":1,"worker":"w","completed_at":"t","attrs":{{"label":"7"}}}}"#
        )
    }

    fn msg(n: usize, body: String) -> Received {
        Received {
            message_id: format!("m{n}"),
            receipt_handle: format!("h{n}"),
            body,
            receive_count: 1,
            new_run: false,
        }
    }

    #[tokio::test]
    async fn drops_duplicates_keeps_rejects_and_deletes_everything_written() {
        let dir = std::env::temp_dir().join(format!("sf-collect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let opts = Options {
            jsonl: dir.join("r.jsonl"),
            csv: Some(dir.join("r.csv")),
            rejects: dir.join("rejects.txt"),
            idle_polls: 2,
            wait: Duration::ZERO,
            max_results: None,
        };
        let _ = std::fs::remove_file(&opts.jsonl);
        let _ = std::fs::remove_file(dir.join("r.csv"));
        let q = Queue {
            batches: Mutex::new(vec![
                vec![msg(4, result("b")), msg(5, "garbage".into())],
                vec![msg(1, result("a")), msg(2, result("b")), msg(3, result("a"))],
            ]),
            deleted: Mutex::new(vec![]),
        };
        let s = run(&q, &opts, &Progress::quiet()).await.expect("collect");
        assert_eq!((s.received, s.written, s.duplicates, s.rejected, s.deleted), (5, 2, 2, 1, 5));
        let ids = ids_in(&opts.jsonl).expect("read back");
        assert_eq!(ids.len(), 2);
        assert!(ids.contains("a") && ids.contains("b") && !ids.contains("c"));
        let csv = std::fs::read_to_string(dir.join("r.csv")).expect("csv");
        assert_eq!(csv.lines().count(), 3);
        assert!(csv.lines().nth(1).expect("row").starts_with("a,r,s3://b/a,ok,7,0.900000,"));
        // A second collect into the same files drops what is already there.
        let q2 = Queue { batches: Mutex::new(vec![vec![msg(6, result("a"))]]), deleted: Mutex::new(vec![]) };
        let s2 = run(&q2, &opts, &Progress::quiet()).await.expect("collect again");
        assert_eq!((s2.written, s2.duplicates, s2.deleted), (0, 1, 1));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[tokio::test]
    async fn a_multi_image_result_is_one_jsonl_line_and_one_csv_row_per_image() {
        let dir = std::env::temp_dir().join(format!("sf-collect-multi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let opts = Options {
            jsonl: dir.join("r.jsonl"),
            csv: Some(dir.join("r.csv")),
            rejects: dir.join("rejects.txt"),
            idle_polls: 1,
            wait: Duration::ZERO,
            max_results: None,
        };
        let multi = r#"{"v":2,"job_id":"m","run_id":"r","status":"ok","model":{"name":"digits","version":"sha256:x"},"images":[{"url":"s3://b/1","status":"ok","top_k":[{"label":"1","score":0.5}],"attrs":{"label":"1"}},{"url":"s3://b/2","status":"error","error":{"kind":"fetch_not_found","message":"no such key"}}],"attempts":1,"worker":"w","completed_at":"t"}"#;
        let q = Queue {
            batches: Mutex::new(vec![vec![msg(1, multi.into()), msg(2, multi.into())]]),
            deleted: Mutex::new(vec![]),
        };
        let s = run(&q, &opts, &Progress::quiet()).await.expect("collect");
        assert_eq!((s.received, s.written, s.images, s.duplicates, s.deleted), (2, 1, 2, 1, 2));
        assert_eq!(std::fs::read_to_string(&opts.jsonl).expect("jsonl").lines().count(), 1);
        let csv = std::fs::read_to_string(dir.join("r.csv")).expect("csv");
        let rows: Vec<&str> = csv.lines().skip(1).collect();
        assert_eq!(rows.len(), 2);
        assert!(
            rows[0].starts_with("m,r,s3://b/1,ok,1,0.500000,,,digits,") && rows[0].ends_with(",1,0"),
            "{}",
            rows[0]
        );
        assert!(
            rows[1].starts_with("m,r,s3://b/2,error,,,fetch_not_found,no such key,,,") && rows[1].ends_with(",,1"),
            "{}",
            rows[1]
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn csv_fields_are_quoted_when_needed() {
        assert_eq!(quote("a,b"), "\"a,b\"");
        assert_eq!(quote("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(quote("plain"), "plain");
    }
}
