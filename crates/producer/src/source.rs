//! Where jobs come from: a manifest file (plain URL lines, CSV or JSONL), stdin,
//! or an S3 prefix.
//!
//! Manifests are read as a stream, one line at a time, so a manifest of any
//! length runs in constant memory. A bad line is never dropped silently: it
//! comes out as a [`LineError`] with its line number, and the caller decides
//! (skip and count it, or stop under `--strict`).

use scorefleet_core::job::{Image, JobId, JobMessage};
use serde_json::{Map, Value};
use std::io::BufRead;

/// One job as a source describes it, before it becomes a message.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// 1-based line (or object) number in the source, for error reports.
    pub line: u64,
    /// The image URL, as written.
    pub url: String,
    /// An explicit job id, when the manifest gives one.
    pub job_id: Option<JobId>,
    /// Caller attributes, passed through to the result.
    pub attrs: Option<Map<String, Value>>,
}

impl Entry {
    /// The job message this entry becomes in run `run_id`; a URL, id or
    /// `attrs` the worker would refuse is a [`LineError`] here instead, so a
    /// bad line is reported by the producer, not discovered by the fleet.
    pub fn into_job(self, run_id: &str) -> Result<JobMessage, LineError> {
        let line = self.line;
        let err = |e: scorefleet_core::ParseError| LineError { line, message: e.message };
        let job = JobMessage::new(&self.url, run_id, self.job_id).map_err(err)?;
        match self.attrs {
            Some(a) => job.with_attrs(a).map_err(err),
            None => Ok(job),
        }
    }
}

impl Entry {
    /// The image this entry becomes in a job of several images; a URL or
    /// `attrs` the worker would refuse, or an explicit job id (a job of
    /// several images takes its id from all of them), is a [`LineError`].
    pub fn into_image(self) -> Result<Image, LineError> {
        let line = self.line;
        if self.job_id.is_some() {
            return Err(LineError {
                line,
                message:
                    "a row's job_id cannot be used with --images-per-job above 1 (the job's id derives from its images)"
                        .into(),
            });
        }
        Image::new(&self.url, self.attrs).map_err(|e| LineError { line, message: e.message })
    }
}

/// A manifest line that could not be read as a job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LineError {
    /// 1-based line number.
    pub line: u64,
    /// What is wrong with it.
    pub message: String,
}

/// How a manifest is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Choose by file extension: `.csv` → CSV, `.jsonl`/`.ndjson` → JSONL,
    /// anything else (and stdin) → plain lines.
    Auto,
    /// One URL per line; blank lines and `#` comments are skipped.
    Lines,
    /// A header row naming a `url` column, optional `job_id`; every other
    /// column becomes a string attribute (e.g. `label` for ground truth).
    Csv,
    /// One JSON object per line: `{"url":…, "job_id":…?, "attrs":{…}?}`.
    Jsonl,
}

impl Format {
    /// Resolves `Auto` from a file name.
    pub fn resolve(self, path: Option<&str>) -> Format {
        match (self, path) {
            (Format::Auto, Some(p)) if p.ends_with(".csv") => Format::Csv,
            (Format::Auto, Some(p)) if p.ends_with(".jsonl") || p.ends_with(".ndjson") => Format::Jsonl,
            (Format::Auto, _) => Format::Lines,
            (f, _) => f,
        }
    }
}

/// An item of a manifest stream.
pub type Item = Result<Entry, LineError>;

/// Reads a manifest in `format` from `reader`, lazily.
pub fn read_manifest<R: BufRead + Send + 'static>(reader: R, format: Format) -> Box<dyn Iterator<Item = Item> + Send> {
    match format {
        Format::Csv => Box::new(CsvEntries::new(reader)),
        Format::Jsonl => Box::new(lines(reader).filter_map(|(n, l)| match l {
            Ok(text) if text.trim().is_empty() => None,
            Ok(text) => Some(parse_jsonl(n, &text)),
            Err(e) => Some(Err(e)),
        })),
        Format::Lines | Format::Auto => Box::new(lines(reader).filter_map(|(n, l)| match l {
            Ok(text) => {
                let t = text.trim();
                (!t.is_empty() && !t.starts_with('#'))
                    .then(|| Ok(Entry { line: n, url: t.to_owned(), job_id: None, attrs: None }))
            }
            Err(e) => Some(Err(e)),
        })),
    }
}

/// Numbered lines; invalid UTF-8 is a line error, not the end of the stream.
fn lines<R: BufRead>(mut reader: R) -> impl Iterator<Item = (u64, Result<String, LineError>)> {
    let mut n = 0u64;
    let mut buf = Vec::new();
    std::iter::from_fn(move || {
        buf.clear();
        n += 1;
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => None,
            Ok(_) => {
                while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    buf.pop();
                }
                Some((
                    n,
                    String::from_utf8(std::mem::take(&mut buf))
                        .map_err(|_| LineError { line: n, message: "not valid UTF-8".into() }),
                ))
            }
            Err(e) => Some((n, Err(LineError { line: n, message: format!("read error: {e}") }))),
        }
    })
}

fn parse_jsonl(line: u64, text: &str) -> Item {
    let err = |message: String| LineError { line, message };
    let mut obj: Map<String, Value> = match serde_json::from_str(text) {
        Ok(Value::Object(o)) => o,
        Ok(_) => return Err(err("expected a JSON object".into())),
        Err(e) => return Err(err(format!("invalid JSON: {e}"))),
    };
    let url = match obj.remove("url") {
        Some(Value::String(u)) => u,
        Some(_) => return Err(err("`url` must be a string".into())),
        None => return Err(err("missing `url`".into())),
    };
    let job_id = match obj.remove("job_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(JobId::parse(&s).map_err(|e| err(e.message))?),
        Some(_) => return Err(err("`job_id` must be a string".into())),
    };
    let attrs = match obj.remove("attrs") {
        None | Some(Value::Null) => None,
        Some(Value::Object(a)) => Some(a),
        Some(_) => return Err(err("`attrs` must be an object".into())),
    };
    if let Some(k) = obj.keys().next() {
        return Err(err(format!("unknown field `{k}`")));
    }
    Ok(Entry { line, url, job_id, attrs })
}

/// Column positions: `url`, optional `job_id`, and the attribute columns.
struct Columns {
    url: usize,
    job_id: Option<usize>,
    attrs: Vec<(usize, String)>,
}

struct CsvEntries<R: BufRead> {
    reader: csv::Reader<R>,
    header: Option<Result<Columns, LineError>>,
    record: csv::StringRecord,
    done: bool,
}

impl<R: BufRead> CsvEntries<R> {
    fn new(reader: R) -> Self {
        let reader = csv::ReaderBuilder::new().flexible(true).trim(csv::Trim::All).from_reader(reader);
        Self { reader, header: None, record: csv::StringRecord::new(), done: false }
    }

    fn columns(&mut self) -> Result<Columns, LineError> {
        let headers =
            self.reader.headers().map_err(|e| LineError { line: 1, message: format!("bad CSV header: {e}") })?;
        let find = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
        let url = find("url").ok_or_else(|| LineError { line: 1, message: "CSV header has no `url` column".into() })?;
        let job_id = find("job_id");
        let attrs = headers
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != url && Some(*i) != job_id)
            .map(|(i, h)| (i, h.to_owned()))
            .collect();
        Ok(Columns { url, job_id, attrs })
    }
}

impl<R: BufRead> Iterator for CsvEntries<R> {
    type Item = Item;

    fn next(&mut self) -> Option<Item> {
        if self.done {
            return None;
        }
        if self.header.is_none() {
            self.header = Some(self.columns());
        }
        // Disjoint field borrows: the columns are read, the reader and record
        // written, with no per-row copy of the column list.
        let Self { reader, header, record, done } = self;
        let Columns { url: url_i, job_id: id_i, attrs: attr_cols } = match header.as_ref()? {
            Ok(cols) => cols,
            Err(e) => {
                *done = true;
                return Some(Err(e.clone()));
            }
        };
        let (url_i, id_i) = (*url_i, *id_i);
        loop {
            match reader.read_record(record) {
                Ok(false) => return None,
                Ok(true) => {
                    let line = record.position().map_or(0, |p| p.line());
                    if record.iter().all(str::is_empty) {
                        continue;
                    }
                    let err = |message: String| Some(Err(LineError { line, message }));
                    let url = match record.get(url_i) {
                        Some(u) if !u.is_empty() => u.to_owned(),
                        _ => return err("empty `url`".into()),
                    };
                    let job_id = match id_i.and_then(|i| record.get(i)).filter(|s| !s.is_empty()) {
                        None => None,
                        Some(s) => match JobId::parse(s) {
                            Ok(id) => Some(id),
                            Err(e) => return err(e.message),
                        },
                    };
                    let attrs: Map<String, Value> = attr_cols
                        .iter()
                        // An empty cell is an absent attribute, not an empty label.
                        .filter_map(|(i, name)| {
                            let v = record.get(*i).filter(|v| !v.is_empty())?;
                            Some((name.clone(), Value::String(v.to_owned())))
                        })
                        .collect();
                    return Some(Ok(Entry { line, url, job_id, attrs: (!attrs.is_empty()).then_some(attrs) }));
                }
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line());
                    return Some(Err(LineError { line, message: format!("bad CSV record: {e}") }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str, format: Format) -> Vec<Item> {
        read_manifest(std::io::Cursor::new(text.as_bytes().to_vec()), format).collect()
    }

    #[test]
    fn plain_lines_skip_blanks_and_comments_and_keep_line_numbers() {
        let got = read("s3://b1b/a.png\n\n# note\n  https://x.org/b.jpg  \r\n", Format::Lines);
        let urls: Vec<_> = got.iter().map(|e| e.as_ref().map(|e| (e.line, e.url.clone())).expect("ok")).collect();
        assert_eq!(urls, vec![(1, "s3://b1b/a.png".to_owned()), (4, "https://x.org/b.jpg".to_owned())]);
    }

    #[test]
    fn invalid_utf8_is_a_line_error_and_reading_goes_on() {
        let mut bytes = b"s3://bkt/a\n".to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe, b'\n']);
        bytes.extend_from_slice(b"s3://bkt/c\n");
        let got: Vec<_> = read_manifest(std::io::Cursor::new(bytes), Format::Lines).collect();
        assert_eq!(got.len(), 3);
        assert_eq!(got[1].as_ref().expect_err("bad utf8").line, 2);
        assert_eq!(got[2].as_ref().expect("ok").url, "s3://bkt/c");
    }

    #[test]
    fn csv_reads_url_job_id_and_attrs_and_reports_bad_rows() {
        let text = "url,job_id,label\ns3://bkt/a.png,id-1,7\ns3://bkt/b.png,,3\n,id-3,1\ns3://bkt/c.png,bad id,2\n";
        let got = read(text, Format::Csv);
        assert_eq!(got.len(), 4);
        let a = got[0].as_ref().expect("row 2");
        assert_eq!((a.line, a.url.as_str(), a.job_id.as_ref().map(JobId::as_str)), (2, "s3://bkt/a.png", Some("id-1")));
        assert_eq!(a.attrs.as_ref().and_then(|m| m.get("label")), Some(&Value::String("7".into())));
        assert_eq!(got[1].as_ref().expect("row 3").job_id, None);
        let unlabelled = read("url,label\ns3://bkt/x.png,\n", Format::Csv);
        assert_eq!(unlabelled[0].as_ref().expect("row").attrs, None, "empty cells are not attributes");
        assert_eq!(got[2].as_ref().expect_err("empty url").line, 4);
        assert_eq!(got[3].as_ref().expect_err("bad id").line, 5);
    }

    #[test]
    fn csv_without_url_column_is_one_error() {
        let got = read("path,label\na,1\n", Format::Csv);
        assert_eq!(got.len(), 1);
        assert!(got[0].as_ref().expect_err("no url").message.contains("url"));
    }

    #[test]
    fn jsonl_reads_objects_and_reports_each_bad_line() {
        let text = concat!(
            "{\"url\":\"s3://bkt/a\",\"job_id\":\"j1\",\"attrs\":{\"label\":\"7\"}}\n",
            "not json\n",
            "{\"url\":5}\n",
            "[1]\n",
            "{\"url\":\"s3://bkt/b\",\"extra\":1}\n",
            "\n",
            "{\"url\":\"s3://bkt/c\"}\n",
        );
        let got = read(text, Format::Jsonl);
        let lines: Vec<_> = got.iter().map(|r| (r.is_ok(), r.as_ref().map_or_else(|e| e.line, |e| e.line))).collect();
        assert_eq!(lines, vec![(true, 1), (false, 2), (false, 3), (false, 4), (false, 5), (true, 7)]);
    }

    #[test]
    fn format_auto_follows_the_extension() {
        assert_eq!(Format::Auto.resolve(Some("m.csv")), Format::Csv);
        assert_eq!(Format::Auto.resolve(Some("m.jsonl")), Format::Jsonl);
        assert_eq!(Format::Auto.resolve(Some("m.txt")), Format::Lines);
        assert_eq!(Format::Auto.resolve(None), Format::Lines);
        assert_eq!(Format::Csv.resolve(Some("m.txt")), Format::Csv);
    }
}
