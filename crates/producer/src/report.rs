//! `report`: one self-contained HTML file from collected results.
//!
//! Counts by status and error kind, the label distribution, a confidence
//! histogram, throughput over time, the slowest and least confident items, and
//! — when results carry a true label (`attrs.label`, from a manifest column) —
//! accuracy and a confusion matrix. Charts are SVG drawn with plotters and
//! inlined, so the file opens anywhere with no network.

use plotters::prelude::*;
use scorefleet_core::result::{ResultMessage, ResultStatus};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::BufRead;

/// Everything the report shows, computed once from the results.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Stats {
    /// Results read.
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
    /// Completions per second bucket, from the first completion.
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
}

/// How many rows the "slowest" and "least confident" tables list.
const TOP_N: usize = 10;
/// How many failed jobs the report lists (all of them are counted).
const FAILURES_LISTED: usize = 50;

/// Reads a results JSONL stream and computes the statistics.
pub fn stats<R: BufRead>(reader: R) -> std::io::Result<Stats> {
    let mut s = Stats::default();
    let mut times: Vec<f64> = Vec::new();
    for line in reader.lines() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let Ok(r) = ResultMessage::parse(&line) else {
            s.unreadable_lines += 1;
            continue;
        };
        s.jobs += 1;
        if let Ok(t) = time::OffsetDateTime::parse(&r.completed_at, &time::format_description::well_known::Rfc3339) {
            times.push(t.unix_timestamp_nanos() as f64 / 1e9);
        }
        if let Some(ms) = r.latency_ms {
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
                let Some(top) = r.top() else { continue };
                *s.labels.entry(top.label.clone()).or_default() += 1;
                let bin = ((top.score.clamp(0.0, 1.0) * 10.0) as usize).min(9);
                s.confidence_bins[bin] += 1;
                s.least_confident.push((top.score, top.label.clone(), r.job_id.clone(), r.url.clone()));
                s.least_confident.sort_by(|a, b| a.0.total_cmp(&b.0));
                s.least_confident.truncate(TOP_N);
                if let Some(truth) = true_label(&r) {
                    s.labelled += 1;
                    if truth == top.label {
                        s.correct += 1;
                    }
                    *s.confusion.entry((truth, top.label.clone())).or_default() += 1;
                }
            }
        }
    }
    times.sort_by(f64::total_cmp);
    if let (Some(first), Some(last)) = (times.first(), times.last()) {
        s.span_s = last - first;
        // About 30 points across the run (completion times carry sub-second
        // precision, so a short run still draws a line), at least 10 ms wide.
        let width = (s.span_s / 30.0).max(0.01);
        let mut buckets = vec![0u64; (s.span_s / width) as usize + 1];
        for t in &times {
            let i = (((t - first) / width) as usize).min(buckets.len() - 1);
            buckets[i] += 1;
        }
        s.throughput = buckets.iter().enumerate().map(|(i, n)| (i as f64 * width, *n as f64 / width)).collect();
    }
    Ok(s)
}

fn true_label(r: &ResultMessage) -> Option<String> {
    match r.attrs.as_ref()?.get("label")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Renders the report.
pub fn html(s: &Stats, title: &str) -> String {
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
        card("jobs", &s.jobs.to_string(), "id=jobs"),
        card("succeeded", &s.succeeded.to_string(), "id=succeeded"),
        card("failed", &s.failed.to_string(), "id=failed"),
        card(&acc_label, &acc, "id=accuracy"),
        card("result rate, first to last result", &rate, "id=throughput"),
    );
    h.push_str("<section><h2>Errors by kind</h2>");
    if s.errors_by_kind.is_empty() {
        h.push_str("<p>No errors.</p>");
    } else {
        h.push_str("<table id=errors><tr><th>kind</th><th>jobs</th></tr>");
        for (k, n) in &s.errors_by_kind {
            let _ = write!(h, "<tr><td>{}</td><td class=num>{n}</td></tr>", esc(k));
        }
        h.push_str("</table>");
        h.push_str(&failures_table(s));
    }
    h.push_str("</section><section class=charts>");
    let labels: Vec<(String, u64)> = s.labels.iter().map(|(k, v)| (k.clone(), *v)).collect();
    let _ = write!(h, "<figure><figcaption>Predicted labels</figcaption>{}</figure>", bar_chart(&labels, "jobs"));
    let bins: Vec<(String, u64)> =
        s.confidence_bins.iter().enumerate().map(|(i, n)| (format!("{:.1}", i as f64 / 10.0), *n)).collect();
    let _ = write!(
        h,
        "<figure><figcaption>Top-1 confidence (bin lower edge)</figcaption>{}</figure>",
        bar_chart(&bins, "jobs")
    );
    let _ = write!(
        h,
        "<figure><figcaption>Throughput (results/s, by completion time; start-up and queue wait before the first result are not shown)</figcaption>{}</figure>",
        line_chart(&s.throughput)
    );
    h.push_str("</section>");
    if s.labelled > 0 {
        h.push_str(&confusion_table(s));
    }
    h.push_str(
        "<section><h2>Slowest jobs</h2><p>Latency: from the worker's receipt of the message to its result.</p><table id=slowest><tr><th>latency</th><th>job</th><th>url</th></tr>",
    );
    for (ms, id, url) in &s.slowest {
        let _ = write!(h, "<tr><td class=num>{ms} ms</td><td>{}</td><td>{}</td></tr>", esc(id), esc(url));
    }
    h.push_str("</table></section><section><h2>Least confident</h2><table id=least-confident><tr><th>score</th><th>label</th><th>job</th><th>url</th></tr>");
    for (score, label, id, url) in &s.least_confident {
        let _ = write!(
            h,
            "<tr><td class=num>{score:.3}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
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
        "<h3>Failed jobs</h3><table id=failures><tr><th>kind</th><th>message</th><th>job</th><th>url</th></tr>",
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

fn confusion_table(s: &Stats) -> String {
    let mut classes: Vec<&String> = s.confusion.keys().flat_map(|(t, p)| [t, p]).collect();
    classes.sort();
    classes.dedup();
    let max = s.confusion.values().copied().max().unwrap_or(1).max(1);
    let mut h = String::from(
        "<section><h2>Confusion matrix</h2><p>Rows: true label; columns: predicted.</p><table id=confusion class=matrix><tr><th></th>",
    );
    for c in &classes {
        let _ = write!(h, "<th>{}</th>", esc(c));
    }
    h.push_str("</tr>");
    for t in &classes {
        let _ = write!(h, "<tr><th>{}</th>", esc(t));
        for p in &classes {
            let n = s.confusion.get(&((*t).clone(), (*p).clone())).copied().unwrap_or(0);
            // Diagonal in blue, mistakes in red, shaded by count.
            let alpha = if n == 0 { 0.0 } else { 0.15 + 0.85 * n as f64 / max as f64 };
            let rgb = if t == p { "31,119,180" } else { "214,39,40" };
            let _ = write!(h, "<td style=\"background:rgba({rgb},{alpha:.2})\">{n}</td>");
        }
        h.push_str("</tr>");
    }
    h.push_str("</table></section>");
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
td.msg{max-width:560px;overflow-wrap:anywhere}";

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
        let html = html(&s, "run r");
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
    }
}
