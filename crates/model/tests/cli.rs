//! The pinned `scorefleet-model` commands for ONNX graphs: `inspect`, `infer`
//! and `check` (against onnxruntime in the project's `.venv`, which `make
//! test` creates).

use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cli() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_scorefleet-model"));
    c.current_dir(root());
    c
}

#[test]
fn inspect_lists_the_interface_and_exits_1_naming_an_unsupported_operator() {
    let ok = cli().args(["inspect", "--onnx", "models/digits-onnx/digits.onnx", "--json"]).output().expect("run");
    assert!(ok.status.success());
    let v: serde_json::Value = serde_json::from_slice(&ok.stdout).expect("json");
    assert_eq!(v["opset"], 17);
    assert_eq!(v["supported"], true);
    assert_eq!(v["operators"]["Conv"], 2);
    assert_eq!(v["inputs"][0]["shape"], serde_json::json!([null, 1, 28, 28]));
    assert_eq!(v["outputs"][1]["name"], "hr");
    let bad =
        cli().args(["inspect", "--onnx", "crates/model/tests/fixtures/unsupported_op.onnx"]).output().expect("run");
    assert_eq!(bad.status.code(), Some(1));
    let text = String::from_utf8_lossy(&bad.stdout);
    assert!(text.contains("Hardmax") && text.contains("the_hardmax") && text.contains("opset 13"), "{text}");
}

#[test]
fn infer_runs_a_npy_through_the_graph_and_writes_its_first_output() {
    let dir = std::env::temp_dir().join(format!("scorefleet-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (input, output) = (dir.join("x.npy"), dir.join("y.npy"));
    let data: Vec<f32> = (0..3 * 784).map(|i| ((i * 37) % 255) as f32 / 255.0).collect();
    let mut bytes = Vec::new();
    {
        use npyz::WriterBuilder;
        let mut w = npyz::WriteOptions::<f32>::new()
            .default_dtype()
            .shape(&[3, 1, 28, 28])
            .writer(&mut bytes)
            .begin_nd()
            .expect("npy");
        w.extend(data.iter().copied()).expect("write");
        w.finish().expect("finish");
    }
    std::fs::write(&input, bytes).expect("write npy");
    let run = cli()
        .args(["infer", "--onnx", "models/digits-onnx/digits.onnx", "--input"])
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .expect("run");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let out = std::fs::read(&output).expect("output");
    let npy = npyz::NpyFile::new(&out[..]).expect("npy");
    assert_eq!(npy.shape(), &[3, 10]);
    let logits = npy.into_vec::<f32>().expect("f32");
    assert!(logits.iter().all(|v| v.is_finite()));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn check_agrees_with_onnxruntime_on_the_digits_graph() {
    let python = root().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run `make test` (it creates .venv with onnxruntime)", python.display());
    let run = cli().args(["check", "--onnx", "models/digits-onnx/digits.onnx", "--json"]).output().expect("run");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).expect("json");
    assert_eq!(v["shape"], serde_json::json!([2, 10]));
    let diff = v["max_abs_diff"].as_f64().expect("a number");
    assert!(diff < 1e-4, "runner vs onnxruntime: {diff}");
}
