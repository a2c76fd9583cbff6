//! `report`: one self-contained HTML file from collected results.
//!
//! Counts by status and error kind, the label distribution, a confidence
//! histogram, throughput over time, the slowest and least confident items, and
//! — when results carry a true label (`attrs.label`, from a manifest column) —
//! accuracy and a confusion matrix. Charts are SVG drawn with plotters and
//! inlined, so the file opens anywhere with no network. Thumbnails of the
//! least confident, the misclassified and the failed-but-decodable images
//! ([`crate::thumbnail`]) are inlined as `data:` URIs.
//!
//! Memory does not grow with the results file: [`stats`] reads it line by
//! line and keeps counters, bounded lists (the top [`TOP_N`], the first
//! [`FAILURES_LISTED`] failures, [`PER_CELL`] examples per confusion cell) and
//! a throughput histogram of at most [`Throughput::BUCKETS`] buckets whose
//! width doubles as the run's span grows.

use crate::progress::Progress;
use crate::thumbnail::ThumbError;
use plotters::prelude::*;
use scorefleet_core::result::{ResultMessage, ResultStatus};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::BufRead;

/// One example job: (top-1 score, job id, url).
pub type Example = (f32, String, String);

/// Everything the report shows, computed once from the results.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    /// Images answered: one per `v: 1` result, one per image of a `v: 2`
    /// result (every figure below counts images the same way).
    pub jobs: u64,
    /// `status: ok`.
    pub succeeded: u64,
    /// `status: error`.
    pub failed: u64,
    /// Failures by error kind.
    pub errors_by_kind: BTreeMap<String, u64>,
    /// The first failed jobs, in file order: (error kind, message, job id, url).
    pub failures: Vec<(String, String, String, String)>,
    /// Top-1 label counts.
    pub labels: BTreeMap<String, u64>,
    /// Top-1 score histogram, 10 bins over [0, 1].
    pub confidence_bins: [u64; 10],
    /// Completions per second, (seconds since the first completion, rate).
    pub throughput: Vec<(f64, f64)>,
    /// Seconds from first to last completion.
    pub span_s: f64,
    /// Scored results that carry a true label.
    pub labelled: u64,
    /// Of those, how many the model got right.
    pub correct: u64,
    /// (truth, predicted) → count. Not in the JSON form (tuple keys).
    #[serde(skip)]
    pub confusion: BTreeMap<(String, String), u64>,
    /// (truth, predicted) → the first [`PER_CELL`] misclassified jobs of that
    /// cell: (score, job id, url). Only off-diagonal cells.
    #[serde(skip)]
    pub misclassified: BTreeMap<(String, String), Vec<Example>>,
    /// The slowest jobs: (latency ms, job id, url).
    pub slowest: Vec<(u64, String, String)>,
    /// The least confident scored jobs: (score, label, job id, url).
    pub least_confident: Vec<(f32, String, String, String)>,
    /// Unparsable lines in the results file.
    pub unreadable_lines: u64,
}

impl Stats {
    /// Accuracy over the labelled results, if any.
    pub fn accuracy(&self) -> Option<f64> {
        (self.labelled > 0).then(|| self.correct as f64 / self.labelled as f64)
    }

    /// The URLs worth a thumbnail, at most `limit`, shared fairly between the
    /// least confident, the misclassified and the failed jobs (round robin),
    /// without repeats. Failures whose kind means nothing was read
    /// (not found, denied, blocked, invalid message) are left out.
    pub fn thumbnail_urls(&self, limit: usize) -> Vec<String> {
        let least: Vec<&str> = self.least_confident.iter().map(|e| e.3.as_str()).collect();
        let wrong: Vec<&str> = self.misclassified.values().flatten().map(|e| e.2.as_str()).collect();
        let failed: Vec<&str> =
            self.failures.iter().filter(|f| !NOTHING_READ.contains(&f.0.as_str())).map(|f| f.3.as_str()).collect();
        let lists = [least, wrong, failed];
        let mut out: Vec<String> = Vec::new();
        let longest = lists.iter().map(Vec::len).max().unwrap_or(0);
        'fill: for i in 0..longest {
            for list in &lists {
                if out.len() >= limit {
                    break 'fill;
                }
                if let Some(url) = list.get(i)
                    && !out.iter().any(|u| u == url)
                {
                    out.push((*url).to_owned());
                }
            }
        }
        out
    }
}

/// How many rows the "slowest" and "least confident" tables list.
pub const TOP_N: usize = 10;
/// How many failed jobs the report lists (all of them are counted).
pub const FAILURES_LISTED: usize = 50;
/// How many misclassified examples are kept per confusion-matrix cell.
pub const PER_CELL: usize = 8;
/// Error kinds of jobs whose object was never read: no thumbnail to try.
const NOTHING_READ: [&str; 4] = ["fetch_not_found", "fetch_denied", "blocked_url", "invalid_message"];
/// Lines between two progress updates while reading.
const PROGRESS_EVERY: u64 = 10_000;

/// Completions over time in bounded memory: [`Self::BUCKETS`] buckets of
/// `width` seconds from `origin`; a time outside them doubles the width
/// (merging neighbours) until it fits, towards the past or the future.
#[derive(Debug, Clone)]
pub struct Throughput {
    origin: f64,
    width: f64,
    counts: Vec<u64>,
    first: f64,
    last: f64,
}

impl Throughput {
    /// Buckets kept, whatever the run's span.
    pub const BUCKETS: usize = 4096;
    /// The narrowest bucket: completion times carry sub-second precision.
    const MIN_WIDTH_S: f64 = 0.01;

    fn new(t: f64) -> Self {
        Self { origin: t, width: Self::MIN_WIDTH_S, counts: vec![0; Self::BUCKETS], first: t, last: t }
    }

    fn add(&mut self, t: f64) {
        if !t.is_finite() {
            return;
        }
        self.first = self.first.min(t);
        self.last = self.last.max(t);
        let n = Self::BUCKETS;
        while t < self.origin {
            // The old range becomes the upper half: bucket i → (n + i) / 2.
            let mut merged = vec![0; n];
            for (i, c) in self.counts.iter().enumerate() {
                merged[(n + i) / 2] += c;
            }
            self.origin -= n as f64 * self.width;
            self.width *= 2.0;
            self.counts = merged;
        }
        while t >= self.origin + n as f64 * self.width {
            let mut merged = vec![0; n];
            for (i, c) in self.counts.iter().enumerate() {
                merged[i / 2] += c;
            }
            self.width *= 2.0;
            self.counts = merged;
        }
        let i = (((t - self.origin) / self.width) as usize).min(n - 1);
        self.counts[i] += 1;
    }

    /// About `points` points from the first completion to the last:
    /// (seconds since the first, results per second).
    fn curve(&self, points: usize) -> Vec<(f64, f64)> {
        let lo = ((self.first - self.origin) / self.width) as usize;
        let hi = (((self.last - self.origin) / self.width) as usize).min(self.counts.len() - 1);
        let span = hi.saturating_sub(lo) + 1;
        let group = span.div_ceil(points.max(1)).max(1);
        let w = group as f64 * self.width;
        self.counts[lo..=hi]
            .chunks(group)
            .enumerate()
            .map(|(j, c)| (j as f64 * w, c.iter().sum::<u64>() as f64 / w))
            .collect()
    }
}

/// Reads a results JSONL stream and computes the statistics.
pub fn stats<R: BufRead>(reader: R) -> std::io::Result<Stats> {
    stats_with_progress(reader, &Progress::quiet())
}

/// [`stats`], showing how many lines were read on `progress`.
pub fn stats_with_progress<R: BufRead>(mut reader: R, progress: &Progress) -> std::io::Result<Stats> {
    let mut s = Stats::default();
    let mut times: Option<Throughput> = None;
    let mut lines = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            break;
        }
        lines += 1;
        if lines.is_multiple_of(PROGRESS_EVERY) {
            progress.show(lines, "lines", || format!("read {lines} lines"));
        }
        if line.trim().is_empty() {
            continue;
        }
        let Ok(r) = ResultMessage::parse(line.trim_end()) else {
            s.unreadable_lines += 1;
            continue;
        };
        for row in r.per_image() {
            add(&mut s, &mut times, row);
        }
    }
    if let Some(t) = &times {
        s.span_s = t.last - t.first;
        // About 30 points across the run.
        s.throughput = t.curve(30);
    }
    Ok(s)
}

fn add(s: &mut Stats, times: &mut Option<Throughput>, r: ResultMessage) {
    s.jobs += 1;
    if let Ok(t) = time::OffsetDateTime::parse(&r.completed_at, &time::format_description::well_known::Rfc3339) {
        let t = t.unix_timestamp_nanos() as f64 / 1e9;
        times.get_or_insert_with(|| Throughput::new(t)).add(t);
    }
    if let Some(ms) = r.latency_ms
        && (s.slowest.len() < TOP_N || s.slowest.last().is_some_and(|e| ms > e.0))
    {
        s.slowest.push((ms, r.job_id.clone(), r.url.clone()));
        s.slowest.sort_by_key(|e| std::cmp::Reverse(e.0));
        s.slowest.truncate(TOP_N);
    }
    match r.status {
        ResultStatus::Error => {
            s.failed += 1;
            let kind = r.error.as_ref().map_or("unknown", |e| e.kind.as_str());
            *s.errors_by_kind.entry(kind.to_owned()).or_default() += 1;
            if s.failures.len() < FAILURES_LISTED {
                let message = r.error.as_ref().map_or("", |e| e.message.as_str());
                s.failures.push((kind.to_owned(), message.to_owned(), r.job_id.clone(), r.url.clone()));
            }
        }
        ResultStatus::Ok => {
            s.succeeded += 1;
            let Some(top) = r.top() else { return };
            *s.labels.entry(top.label.clone()).or_default() += 1;
            let bin = ((top.score.clamp(0.0, 1.0) * 10.0) as usize).min(9);
            s.confidence_bins[bin] += 1;
            if s.least_confident.len() < TOP_N || s.least_confident.last().is_some_and(|e| top.score < e.0) {
                s.least_confident.push((top.score, top.label.clone(), r.job_id.clone(), r.url.clone()));
                s.least_confident.sort_by(|a, b| a.0.total_cmp(&b.0));
                s.least_confident.truncate(TOP_N);
            }
            if let Some(truth) = true_label(&r) {
                s.labelled += 1;
                if truth == top.label {
                    s.correct += 1;
                } else {
                    let cell = s.misclassified.entry((truth.clone(), top.label.clone())).or_default();
                    if cell.len() < PER_CELL {
                        cell.push((top.score, r.job_id.clone(), r.url.clone()));
                    }
                }
                *s.confusion.entry((truth, top.label.clone())).or_default() += 1;
            }
        }
    }
}

fn true_label(r: &ResultMessage) -> Option<String> {
    match r.attrs.as_ref()?.get("label")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Thumbnails by URL, as [`crate::thumbnail::fetch_all`] returns them; an
/// empty map draws no images.
pub type Thumbnails = HashMap<String, Result<String, ThumbError>>;

/// Renders the report, with the thumbnails found in `thumbs`.
pub fn html(s: &Stats, title: &str, thumbs: &Thumbnails) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>{t}</title><style>{CSS}</style></head><body><h1>{t}</h1>",
        t = esc(title)
    );
    let acc = s.accuracy().map_or("—".into(), |a| format!("{:.2}%", a * 100.0));
    let acc_label =
        if s.labelled > 0 { format!("accuracy, {} labelled", s.labelled) } else { "accuracy (no labels)".into() };
    let rate = if s.span_s > 0.0 { format!("{:.1}/s", s.jobs as f64 / s.span_s) } else { "—".into() };
    let _ = write!(
        h,
        "<section class=cards>{}{}{}{}{}</section>",
        card("images", &s.jobs.to_string(), "id=jobs"),
        card("succeeded", &s.succeeded.to_string(), "id=succeeded"),
        card("failed", &s.failed.to_string(), "id=failed"),
        card(&acc_label, &acc, "id=accuracy"),
        card("result rate, first to last result", &rate, "id=throughput"),
    );
    h.push_str("<section><h2>Errors by kind</h2>");
    if s.errors_by_kind.is_empty() {
        h.push_str("<p>No errors.</p>");
    } else {
        h.push_str("<table id=errors><tr><th>kind</th><th>images</th></tr>");
        for (k, n) in &s.errors_by_kind {
            let _ = write!(h, "<tr><td>{}</td><td class=num>{n}</td></tr>", esc(k));
        }
        h.push_str("</table>");
        h.push_str(&failures_table(s));
        h.push_str(&failed_thumbs(s, thumbs));
    }
    h.push_str("</section><section class=charts>");
    let labels: Vec<(String, u64)> = s.labels.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let _ = write!(h, "<figure><figcaption>Predicted labels</figcaption>{}</figure>", bar_chart(&labels, "images"));
    let bins: Vec<(String, u64)> =
        s.confidence_bins.iter().enumerate().map(|(i, n)| (format!("{:.1}", i as f64 / 10.0), *n)).collect();
    let _ = write!(
        h,
        "<figure><figcaption>Top-1 confidence (bin lower edge)</figcaption>{}</figure>",
        bar_chart(&bins, "images")
    );
    let _ = write!(
        h,
        "<figure><figcaption>Throughput (results/s, by completion time; start-up and queue wait before the first result are not shown)</figcaption>{}</figure>",
        line_chart(&s.throughput)
    );
    h.push_str("</section>");
    if s.labelled > 0 {
        h.push_str(&confusion_table(s, thumbs));
    }
    h.push_str(
        "<section><h2>Slowest jobs</h2><p>Latency: from the worker's receipt of the message to its result.</p><table id=slowest><tr><th>latency</th><th>job</th><th>url</th></tr>",
    );
    for (ms, id, url) in &s.slowest {
        let _ = write!(h, "<tr><td class=num>{ms} ms</td><td>{}</td><td>{}</td></tr>", esc(id), esc(url));
    }
    h.push_str("</table></section><section><h2>Least confident</h2><table id=least-confident><tr><th>image</th><th>score</th><th>label</th><th>job</th><th>url</th></tr>");
    for (score, label, id, url) in &s.least_confident {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=num>{score:.3}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            img(thumbs, url, id),
            esc(label),
            esc(id),
            esc(url)
        );
    }
    h.push_str("</table></section>");
    if s.unreadable_lines > 0 {
        let _ =
            write!(h, "<p class=warn>{} unreadable lines in the results file were skipped.</p>", s.unreadable_lines);
    }
    h.push_str("</body></html>\n");
    h
}

fn failures_table(s: &Stats) -> String {
    let mut h = String::from(
        "<h3>Failed images</h3><table id=failures><tr><th>kind</th><th>message</th><th>job</th><th>url</th></tr>",
    );
    for (kind, message, id, url) in &s.failures {
        let _ = write!(
            h,
            "<tr><td>{}</td><td class=msg>{}</td><td>{}</td><td>{}</td></tr>",
            esc(kind),
            esc(message),
            esc(id),
            esc(url)
        );
    }
    h.push_str("</table>");
    if s.failed > s.failures.len() as u64 {
        let _ = write!(
            h,
            "<p>The first {} of {} failed jobs; every result is in the collected JSONL and CSV files.</p>",
            s.failures.len(),
            s.failed
        );
    }
    h
}

/// Thumbnails of failed jobs whose object decodes (a model or size limit
/// refused it, not the bytes).
fn failed_thumbs(s: &Stats, thumbs: &Thumbnails) -> String {
    let shown: Vec<String> = s
        .failures
        .iter()
        .filter_map(|(kind, _, id, url)| {
            let Some(Ok(uri)) = thumbs.get(url) else { return None };
            Some(figure(uri, id, url, &esc(kind)))
        })
        .collect();
    if shown.is_empty() {
        return String::new();
    }
    format!("<h3>Failed images that decode</h3><div class=thumbs id=thumbs-failed>{}</div>", shown.concat())
}

/// One thumbnail with a caption (already escaped).
fn figure(uri: &str, id: &str, url: &str, caption: &str) -> String {
    format!(
        "<figure class=thumb><img class=thumb src=\"{uri}\" alt=\"{}\" title=\"{}\"><figcaption>{caption}</figcaption></figure>",
        esc(id),
        esc(url)
    )
}

/// The thumbnail of `url` as an `<img>`, or a dash.
fn img(thumbs: &Thumbnails, url: &str, id: &str) -> String {
    match thumbs.get(url) {
        Some(Ok(uri)) => format!("<img class=thumb src=\"{uri}\" alt=\"{}\">", esc(id)),
        Some(Err(e)) => format!("<span class=nothumb title=\"{}\">—</span>", esc(&e.to_string())),
        None => "—".into(),
    }
}

fn confusion_table(s: &Stats, thumbs: &Thumbnails) -> String {
    let mut classes: Vec<&String> = s.confusion.keys().flat_map(|(t, p)| [t, p]).collect();
    classes.sort();
    classes.dedup();
    let index = |c: &str| classes.iter().position(|k| k.as_str() == c).unwrap_or(0);
    let max = s.confusion.values().copied().max().unwrap_or(1).max(1);
    let mut h = String::from(
        "<section><h2>Confusion matrix</h2><p>Rows: true label; columns: predicted. A mistake's count links to its images below.</p><table id=confusion class=matrix><tr><th></th>",
    );
    for c in &classes {
        let _ = write!(h, "<th>{}</th>", esc(c));
    }
    h.push_str("</tr>");
    let has_images = |key: &(String, String)| {
        s.misclassified.get(key).is_some_and(|v| v.iter().any(|e| matches!(thumbs.get(&e.2), Some(Ok(_)))))
    };
    for (ti, t) in classes.iter().enumerate() {
        let _ = write!(h, "<tr><th>{}</th>", esc(t));
        for (pi, p) in classes.iter().enumerate() {
            let key = ((*t).clone(), (*p).clone());
            let n = s.confusion.get(&key).copied().unwrap_or(0);
            // Diagonal in blue, mistakes in red, shaded by count.
            let alpha = if n == 0 { 0.0 } else { 0.15 + 0.85 * n as f64 / max as f64 };
            let rgb = if t == p { "31,119,180" } else { "214,39,40" };
            let cell =
                if t != p && has_images(&key) { format!("<a href=\"#cell-{ti}-{pi}\">{n}</a>") } else { n.to_string() };
            let _ = write!(h, "<td style=\"background:rgba({rgb},{alpha:.2})\">{cell}</td>");
        }
        h.push_str("</tr>");
    }
    h.push_str("</table>");
    let cells: Vec<String> = s
        .misclassified
        .iter()
        .filter(|(key, _)| has_images(key))
        .map(|((t, p), examples)| {
            let figs: String = examples
                .iter()
                .filter_map(|(score, id, url)| match thumbs.get(url) {
                    Some(Ok(uri)) => Some(figure(uri, id, url, &format!("{score:.3}"))),
                    _ => None,
                })
                .collect();
            let n = s.confusion.get(&(t.clone(), p.clone())).copied().unwrap_or(0);
            format!(
                "<div class=cell id=\"cell-{}-{}\"><h3>true {} → predicted {} ({n})</h3><div class=thumbs>{figs}</div></div>",
                index(t),
                index(p),
                esc(t),
                esc(p)
            )
        })
        .collect();
    if !cells.is_empty() {
        let _ = write!(
            h,
            "<h3>Misclassified</h3><p>Up to {PER_CELL} images per mistake, in file order, with the top-1 score.</p><div id=thumbs-misclassified>{}</div>",
            cells.concat()
        );
    }
    h.push_str("</section>");
    h
}

fn card(label: &str, value: &str, attr: &str) -> String {
    format!("<div class=card><div class=label>{label}</div><div class=value {attr}>{}</div></div>", esc(value))
}

const W: u32 = 460;
const H: u32 = 260;

fn bar_chart(data: &[(String, u64)], y_desc: &str) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let ymax = data.iter().map(|d| d.1).max().unwrap_or(0).max(1) as f64 * 1.1;
        let n = data.len().max(1);
        let Ok(mut chart) = ChartBuilder::on(&root)
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(44)
            .build_cartesian_2d((0..n - 1).into_segmented(), 0f64..ymax)
        else {
            return svg_error();
        };
        let _ = chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|x| match x {
                SegmentValue::CenterOf(i) => data.get(*i).map(|d| d.0.clone()).unwrap_or_default(),
                _ => String::new(),
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .y_desc(y_desc)
            .draw();
        let _ = chart.draw_series(data.iter().enumerate().map(|(i, (_, v))| {
            let mut bar = Rectangle::new(
                [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), *v as f64)],
                RGBColor(31, 119, 180).filled(),
            );
            bar.set_margin(0, 0, 4, 4);
            bar
        }));
        let _ = root.present();
    }
    svg
}

fn line_chart(points: &[(f64, f64)]) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (W, H)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let xmax = points.last().map_or(1.0, |p| p.0).max(1.0);
        let ymax = points.iter().map(|p| p.1).fold(0.0, f64::max).max(1.0) * 1.1;
        let Ok(mut chart) = ChartBuilder::on(&root)
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(44)
            .build_cartesian_2d(0f64..xmax, 0f64..ymax)
        else {
            return svg_error();
        };
        let _ = chart
            .configure_mesh()
            .y_label_formatter(&|y| format!("{y:.0}"))
            .x_desc("seconds since first result")
            .y_desc("results/s")
            .draw();
        let _ = chart.draw_series(LineSeries::new(points.iter().copied(), RGBColor(31, 119, 180).stroke_width(2)));
        let _ = root.present();
    }
    svg
}

fn svg_error() -> String {
    "<p>(chart unavailable)</p>".into()
}

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const CSS: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1500px}\
h1{font-size:22px}h2{font-size:17px;margin-top:28px}\
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{border:1px solid #ddd;border-radius:6px;padding:10px 16px;min-width:120px}\
.card .label{color:#666;font-size:12px;text-transform:uppercase}.card .value{font-size:24px;font-weight:600}\
.charts{display:flex;gap:16px;flex-wrap:wrap}figure{margin:0}figcaption{font-weight:600;margin:8px 0}\
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left}td.num{text-align:right}\
.matrix td{text-align:right;min-width:36px}.warn{color:#b00}h3{font-size:15px;margin:16px 0 6px}\
td.msg{max-width:560px;overflow-wrap:anywhere}\
img.thumb{width:64px;height:64px;object-fit:contain;image-rendering:pixelated;background:#000;display:block}\
.thumbs{display:flex;gap:8px;flex-wrap:wrap}figure.thumb{margin:0;width:96px;font-size:11px;color:#555;overflow-wrap:anywhere}\
figure.thumb figcaption{font-weight:400;margin:2px 0}\
#thumbs-misclassified{display:flex;flex-wrap:wrap;gap:4px 28px}.cell h3{font-size:13px}";

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str, status: &str, label: &str, score: f32, truth: &str, t: &str, ms: u64) -> String {
        if status == "ok" {
            format!(
                r#"{{"v":1,"job_id":"{id}","run_id":"r","url":"s3://b/{id}","status":"ok","top_k":[{{"label":"{label}","score":{score}}}],"attempts":1,"worker":"w","completed_at":"{t}","latency_ms":{ms},"attrs":{{"label":"{truth}"}}}}"#
            )
        } else {
            format!(
                r#"{{"v":1,"job_id":"{id}","run_id":"r","url":"s3://b/{id}","status":"error","error":{{"kind":"{label}","message":"m <b>"}},"attempts":1,"worker":"w","completed_at":"{t}"}}"#
            )
        }
    }

    #[test]
    fn a_multi_image_result_counts_each_image() {
        let multi = r#"{"v":2,"job_id":"m","run_id":"r","status":"ok","model":{"name":"d","version":"v"},"images":[{"url":"s3://b/1","status":"ok","top_k":[{"label":"1","score":0.9}],"attrs":{"label":"1"}},{"url":"s3://b/2","status":"ok","top_k":[{"label":"3","score":0.6}],"attrs":{"label":"2"}},{"url":"s3://b/3","status":"error","error":{"kind":"decode","message":"bad"}}],"attempts":1,"worker":"w","completed_at":"2026-12-01T00:00:00Z","latency_ms":5}"#;
        let text = format!("{multi}\n{}\n", line("single", "ok", "1", 0.8, "1", "2026-12-01T00:00:01Z", 3));
        let s = stats(std::io::Cursor::new(text)).expect("stats");
        assert_eq!((s.jobs, s.succeeded, s.failed, s.labelled, s.correct), (4, 3, 1, 3, 2));
        assert_eq!(s.errors_by_kind.get("decode"), Some(&1));
        assert_eq!(s.failures[0].3, "s3://b/3", "the failed image is named by its own url");
        assert_eq!(s.misclassified.get(&("2".to_owned(), "3".to_owned())).map(Vec::len), Some(1));
    }

    #[test]
    fn stats_and_html_carry_the_expected_counts() {
        let text = [
            line("a", "ok", "7", 0.99, "7", "2026-11-26T10:00:00Z", 30),
            line("b", "ok", "1", 0.40, "7", "2026-11-26T10:00:01Z", 90),
            line("c", "ok", "3", 0.95, "3", "2026-11-26T10:00:02Z", 10),
            line("d", "error", "decode", 0.0, "", "2026-11-26T10:00:03Z", 0),
            "not json".to_owned(),
        ]
        .join("\n");
        let s = stats(std::io::Cursor::new(text)).expect("read");
        assert_eq!((s.jobs, s.succeeded, s.failed, s.unreadable_lines), (4, 3, 1, 1));
        assert_eq!(s.errors_by_kind.get("decode"), Some(&1));
        assert_eq!((s.labelled, s.correct), (3, 2));
        assert_eq!(s.confusion.get(&("7".to_owned(), "1".to_owned())), Some(&1));
        assert_eq!(s.confidence_bins[4], 1);
        assert_eq!(s.confidence_bins[9], 2);
        assert_eq!(s.slowest[0].1, "b");
        assert_eq!(s.least_confident[0].2, "b");
        assert!((s.span_s - 3.0).abs() < 1e-9);
        let html = html(&s, "run r", &Thumbnails::new());
        assert!(html.contains("<div class=value id=jobs>4</div>"));
        assert!(html.contains("<div class=value id=accuracy>66.67%</div>"));
        assert!(html.contains("<td>decode</td><td class=num>1</td>"));
        assert_eq!(s.failures.len(), 1);
        assert!(
            html.contains("<tr><td>decode</td><td class=msg>m &lt;b&gt;</td><td>d</td><td>s3://b/d</td></tr>"),
            "the failed job is listed with its message and url"
        );
        assert!(html.matches("<svg").count() >= 3, "three inline charts");
        assert!(!html.contains("<b>"), "messages are escaped");
        assert!(html.contains("id=confusion"));
        let json = serde_json::to_value(&s).expect("stats serialise to JSON");
        assert_eq!(json["jobs"], 4);
        assert!(!html.contains("<img"), "no thumbnails without images");
    }

    #[test]
    fn thumbnails_show_least_confident_misclassified_and_failed_but_decoded() {
        let text = [
            line("a", "ok", "7", 0.99, "7", "2026-11-26T10:00:00Z", 30),
            line("b", "ok", "1", 0.40, "7", "2026-11-26T10:00:01Z", 90),
            line("c", "ok", "3", 0.95, "3", "2026-11-26T10:00:02Z", 10),
            line("d", "error", "too_large", 0.0, "", "2026-11-26T10:00:03Z", 0),
            line("e", "error", "decode", 0.0, "", "2026-11-26T10:00:04Z", 0),
            line("f", "error", "fetch_not_found", 0.0, "", "2026-11-26T10:00:05Z", 0),
        ]
        .join("\n");
        let s = stats(std::io::Cursor::new(text)).expect("read");
        let urls = s.thumbnail_urls(100);
        assert!(urls.contains(&"s3://b/b".to_owned()) && urls.contains(&"s3://b/d".to_owned()));
        assert!(!urls.contains(&"s3://b/f".to_owned()), "nothing was read for a missing object");
        assert_eq!(urls.iter().collect::<std::collections::HashSet<_>>().len(), urls.len(), "no repeats");
        assert_eq!(s.thumbnail_urls(2).len(), 2, "the limit holds");
        // Least confident first, then misclassified, then failed: b, then d.
        assert_eq!(&s.thumbnail_urls(2)[..], ["s3://b/b", "s3://b/d"]);

        let png = |v: u8| {
            let mut out = Vec::new();
            image::DynamicImage::ImageLuma8(image::GrayImage::from_pixel(28, 28, image::Luma([v])))
                .write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
                .expect("png");
            crate::thumbnail::data_uri(&out).expect("thumb")
        };
        let mut thumbs = Thumbnails::new();
        for u in ["s3://b/a", "s3://b/b", "s3://b/c", "s3://b/d"] {
            thumbs.insert(u.to_owned(), Ok(png(200)));
        }
        thumbs.insert("s3://b/e".to_owned(), Err(ThumbError::Decode("truncated".into())));
        let page = html(&s, "run r", &thumbs);
        let section = |id: &str| {
            let start = page.find(&format!("id={id}")).unwrap_or_else(|| panic!("section {id}"));
            let rest = &page[start..];
            let end =
                ["</table>", "</section>"].iter().filter_map(|m| rest.find(m)).min().map_or(page.len(), |e| start + e);
            page[start..end].to_owned()
        };
        assert_eq!(section("least-confident").matches("<img class=thumb src=\"data:image/png;base64,").count(), 3);
        let wrong = section("thumbs-misclassified");
        assert!(wrong.contains("true 7 → predicted 1 (1)") && wrong.contains("alt=\"b\""), "{wrong}");
        assert!(page.contains("<a href=\"#cell-2-0\">1</a>"), "the matrix links the mistake to its images");
        let failed = section("thumbs-failed");
        assert!(failed.contains("alt=\"d\"") && !failed.contains("alt=\"e\""), "{failed}");
    }

    #[test]
    fn throughput_stays_bounded_and_counts_every_result() {
        let mut t = Throughput::new(1000.0);
        // Out of order, over ten days: the histogram widens, never grows.
        for i in 0..100_000u64 {
            t.add(1000.0 + ((i * 7919) % 100_000) as f64 * 8.64 - 500.0);
        }
        assert_eq!(t.counts.len(), Throughput::BUCKETS);
        assert_eq!(t.counts.iter().sum::<u64>(), 100_000);
        let curve = t.curve(30);
        assert!(curve.len() <= 30 && curve.len() >= 15, "{}", curve.len());
        let total: f64 = curve.iter().map(|p| p.1).sum::<f64>() * (curve[1].0 - curve[0].0);
        assert!((total - 100_000.0).abs() < 1.0, "{total}");
    }
}
