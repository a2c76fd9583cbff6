//! Message bodies: shape, depth bombs, sizes, odd characters, duplicate keys,
//! wrong types.

use super::*;

pub(super) fn cases() -> Vec<Case> {
    use ErrorKind::*;
    let deep = |open: &str, close: &str, n: usize| format!("{}1{}", open.repeat(n), close.repeat(n));
    vec![
        // ---- messages: shape
        case("valid job", msg(job_with("v", Some("1"))), Scored),
        case("empty body", msg(""), DeadLetter),
        case("whitespace body", msg(" \n\t"), DeadLetter),
        case("JSON null", msg("null"), DeadLetter),
        case("JSON array", msg(r#"[{"v":1,"job_id":"adv-1"}]"#), DeadLetter),
        case("JSON string", msg(r#""{\"v\":1}""#), DeadLetter),
        case("not JSON", msg("GET / HTTP/1.1"), DeadLetter),
        case("byte-order mark before the object", msg(format!("\u{feff}{}", job_with("v", Some("1")))), DeadLetter),
        case("trailing garbage", msg(format!("{} x", job_with("v", Some("1")))), DeadLetter),
        case("two objects", msg(format!("{0}{0}", job_with("v", Some("1")))), DeadLetter),
        case("truncated object", msg(r#"{"v":1,"job_id":"adv-1","url":"s3://allowed-bkt/a.png""#), DeadLetter),
        // ---- messages: depth bombs (serde_json's recursion limit is 128;
        // each bomb stays under the 64 KiB body limit, so that limit is not
        // what refuses it)
        case("array depth bomb, 30k deep", msg(deep("[", "]", 30_000)), DeadLetter),
        case(
            "object depth bomb, 10k deep",
            msg(format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000))),
            DeadLetter,
        ),
        case(
            "depth bomb inside attrs of a named job",
            msg(job_with("attrs", Some(&deep("[", "]", 5_000)))),
            Fails(InvalidMessage),
        ),
        case(
            "attrs 100 deep: allowed, under the limit",
            msg(job_with("attrs", Some(&format!("{{\"a\":{}}}", deep("[", "]", 100))))),
            Scored,
        ),
        case(
            "attrs 127 deep: just past the limit",
            msg(job_with("attrs", Some(&format!("{{\"a\":{}}}", deep("[", "]", 127))))),
            Fails(InvalidMessage),
        ),
        // ---- messages: huge strings and size limits
        case("60 KB job_id", msg(job_with("job_id", Some(&format!("\"{}\"", "i".repeat(60_000))))), DeadLetter),
        case(
            "60 KB url of a named job",
            msg(job_with("url", Some(&format!("\"s3://allowed-bkt/{}\"", "k".repeat(60_000))))),
            Fails(InvalidMessage),
        ),
        case(
            "3 KB url (over 2,048 bytes)",
            msg(job_with("url", Some(&format!("\"https://images.test/{}\"", "p".repeat(3000))))),
            Fails(InvalidMessage),
        ),
        case(
            "60 KB run_id",
            msg(job_with("run_id", Some(&format!("\"{}\"", "r".repeat(60_000))))),
            Fails(InvalidMessage),
        ),
        case(
            "5 KB attrs (over 4 KiB)",
            msg(job_with("attrs", Some(&format!("{{\"x\":\"{}\"}}", "a".repeat(5000))))),
            Fails(InvalidMessage),
        ),
        case(
            "3,000 keys in attrs",
            msg(job_with(
                "attrs",
                Some(&format!("{{{}}}", (0..3_000).map(|i| format!("\"k{i}\":0")).collect::<Vec<_>>().join(","))),
            )),
            Fails(InvalidMessage),
        ),
        case(
            "body one byte over 64 KiB",
            msg({
                let base = job_with("attrs", Some(r#"{"pad":""}"#));
                let pad = MAX_BODY_BYTES + 1 - base.len();
                job_with("attrs", Some(&format!("{{\"pad\":\"{}\"}}", " ".repeat(pad))))
            }),
            DeadLetter,
        ),
        case(
            "10 MB body",
            msg(job_with("attrs", Some(&format!("{{\"x\":\"{}\"}}", "a".repeat(10 << 20))))),
            DeadLetter,
        ),
        case(
            "128-char job_id (the maximum)",
            msg(job_with("job_id", Some(&format!("\"{}\"", "j".repeat(128))))),
            Scored,
        ),
        case("129-char job_id", msg(job_with("job_id", Some(&format!("\"{}\"", "j".repeat(129))))), DeadLetter),
        // ---- messages: invalid UTF-8 and odd characters
        case("lone high surrogate in job_id", msg(job_with("job_id", Some(r#""\ud800""#))), DeadLetter),
        case(
            "lone low surrogate in url of a named job",
            msg(job_with("url", Some(r#""s3://allowed-bkt/\udc00""#))),
            Fails(InvalidMessage),
        ),
        case("replacement character in job_id", msg(job_with("job_id", Some("\"adv-\u{fffd}\""))), DeadLetter),
        case("NUL in job_id", msg(job_with("job_id", Some(r#""adv\u0000""#))), DeadLetter),
        case(
            "NUL in the s3 key of a named job",
            msg(job_with("url", Some(r#""s3://allowed-bkt/a\u0000.png""#))),
            Fails(InvalidMessage),
        ),
        case("newline in run_id", msg(job_with("run_id", Some(r#""r\n2""#))), Fails(InvalidMessage)),
        case("non-ASCII run_id", msg(job_with("run_id", Some("\"nächtlich\""))), Fails(InvalidMessage)),
        case("space in job_id", msg(job_with("job_id", Some(r#""a b""#))), DeadLetter),
        // ---- messages: duplicate keys
        case("duplicate v", msg(format!(r#"{{"v":1,{}"#, &job_with("v", Some("1"))[1..])), DeadLetter),
        case("duplicate job_id", msg(format!(r#"{{"job_id":"adv-2",{}"#, &job_with("v", Some("1"))[1..])), DeadLetter),
        case(
            "duplicate url of a named job",
            msg(format!(r#"{{"url":"s3://other-bkt/x",{}"#, &job_with("v", Some("1"))[1..])),
            Fails(InvalidMessage),
        ),
        case("duplicate attrs of a named job", msg(job_with("attrs", Some(r#"{},"attrs":{}"#))), Fails(InvalidMessage)),
        // ---- messages: wrong types
        case("number job_id", msg(job_with("job_id", Some("7"))), DeadLetter),
        case("null job_id", msg(job_with("job_id", Some("null"))), DeadLetter),
        case("object job_id", msg(job_with("job_id", Some(r#"{"id":"adv-1"}"#))), DeadLetter),
        case("number url", msg(job_with("url", Some("7"))), Fails(InvalidMessage)),
        case("array url", msg(job_with("url", Some(r#"["s3://allowed-bkt/a.png"]"#))), Fails(InvalidMessage)),
        case("number run_id", msg(job_with("run_id", Some("20261126"))), Fails(InvalidMessage)),
        case("huge number run_id", msg(job_with("run_id", Some("1e999"))), Fails(InvalidMessage)),
        case("string attrs", msg(job_with("attrs", Some(r#""label=7""#))), Fails(InvalidMessage)),
        case("null attrs (same as absent)", msg(job_with("attrs", Some("null"))), Scored),
        case("string v", msg(job_with("v", Some(r#""1""#))), Fails(InvalidMessage)),
        case("float v", msg(job_with("v", Some("1.0"))), Fails(InvalidMessage)),
        case("negative v", msg(job_with("v", Some("-1"))), Fails(InvalidMessage)),
        case("v past u64", msg(job_with("v", Some("18446744073709551617"))), Fails(InvalidMessage)),
        case("v 2", msg(job_with("v", Some("2"))), Fails(InvalidMessage)),
        case("missing v", msg(job_with("v", None)), Fails(InvalidMessage)),
        case("missing url", msg(job_with("url", None)), Fails(InvalidMessage)),
        case("missing job_id", msg(job_with("job_id", None)), DeadLetter),
        case("unknown field", msg(job_with("callback", Some(r#""http://169.254.169.254/""#))), Fails(InvalidMessage)),
    ]
}
