//! `scorefleet-model`: train, evaluate and benchmark the burn classifiers.
//!
//! ```text
//! scorefleet-model train --model digits [--epochs 4] [--out models/digits]
//! scorefleet-model eval  --model digits [--json] [--limit N]
//! scorefleet-model bench --manifest models/resnet18/manifest.json --batches 1,8,32 --json
//! scorefleet-model infer --onnx MODEL.onnx --input IN.npy --output OUT.npy [--backend flex]
//! scorefleet-model check --onnx MODEL.onnx        # against onnxruntime (.venv)
//! scorefleet-model inspect --onnx MODEL.onnx [--json]
//! scorefleet-model conformance --data DIR [--suite node,light] [--sample N] [--json]
//! ```

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use npyz::WriterBuilder;
use scorefleet_model::backend::BackendKind;
use scorefleet_model::bench::{BenchInput, ForwardPath, bench_network};
use scorefleet_model::manifest::{Channels, Manifest, repo_manifest};
use scorefleet_model::mnist::{self, Mnist};
use scorefleet_model::onnx::value::Value;
use scorefleet_model::onnx::{OnnxModel, Options};
use scorefleet_model::predictor::Network;
use scorefleet_model::train::{self, TrainConfig};
use scorefleet_model::{digits, weights};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "scorefleet-model", about = "Train, evaluate and benchmark scorefleet's burn models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Train `digits` on MNIST and write weights + manifest.
    Train {
        /// Only `digits` is trained here.
        #[arg(long, default_value = "digits", env = "SCOREFLEET_MODEL")]
        model: String,
        /// Directory of the four MNIST IDX .gz files.
        #[arg(long, env = "SCOREFLEET_MNIST_DIR")]
        data: Option<PathBuf>,
        /// Output directory (weights + manifest.json).
        #[arg(long, env = "SCOREFLEET_MODEL_OUT")]
        out: Option<PathBuf>,
        /// Passes over the training set.
        #[arg(long, default_value_t = TrainConfig::default().epochs)]
        epochs: usize,
        /// Mini-batch size.
        #[arg(long, default_value_t = TrainConfig::default().batch_size)]
        batch_size: usize,
        /// Initial Adam learning rate.
        #[arg(long, default_value_t = TrainConfig::default().lr)]
        lr: f64,
        /// Learning-rate factor per epoch.
        #[arg(long, default_value_t = TrainConfig::default().lr_decay)]
        lr_decay: f64,
        /// Seed of initialisation, dropout and shuffling.
        #[arg(long, default_value_t = TrainConfig::default().seed)]
        seed: u64,
        /// burn backend.
        #[arg(long, env = "SCOREFLEET_BACKEND")]
        backend: Option<BackendKind>,
    },
    /// Evaluate a model on the MNIST test set.
    Eval {
        /// Model name (its manifest is models/<name>/manifest.json) …
        #[arg(long, default_value = "digits", env = "SCOREFLEET_MODEL")]
        model: String,
        /// … or an explicit manifest.
        #[arg(long, env = "SCOREFLEET_MANIFEST")]
        manifest: Option<PathBuf>,
        /// Directory of the MNIST IDX .gz files.
        #[arg(long, env = "SCOREFLEET_MNIST_DIR")]
        data: Option<PathBuf>,
        /// Evaluate only the first N test images.
        #[arg(long)]
        limit: Option<usize>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// burn backend.
        #[arg(long, env = "SCOREFLEET_BACKEND")]
        backend: Option<BackendKind>,
    },
    /// Time burn inference (the burn half of `bench/inference`): one JSON line per batch size.
    Bench {
        /// `digits` or `resnet18` (with --weights), else the name the rows carry.
        #[arg(long)]
        arch: String,
        /// PyTorch-layout safetensors weights of `--arch` (for the `nhwc` and
        /// `reference` paths; ONNX paths need only --onnx).
        #[arg(long)]
        weights: Option<PathBuf>,
        /// Safetensors file with an `input` tensor [n, c, h, w] (n ≥ the largest batch).
        #[arg(long)]
        input: PathBuf,
        /// Output classes.
        #[arg(long, default_value_t = 10)]
        classes: usize,
        /// Batch sizes, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,8,32,128")]
        batches: Vec<usize>,
        /// Backends, comma-separated (default: all compiled in).
        #[arg(long, value_delimiter = ',')]
        backends: Vec<BackendKind>,
        /// Minimum seconds per measurement.
        #[arg(long, default_value_t = 1.0)]
        min_seconds: f64,
        /// Forward paths, comma-separated: `nhwc` (served), `reference` (burn
        /// modules), `onnx` (the --onnx graph through the runner, CPU kernels
        /// on), `onnx-burn` (the same, every node on burn's op), `nhwc-im2col`
        /// and `onnx-im2col` (`nhwc` and `onnx` without Winograd).
        #[arg(long, value_delimiter = ',', default_value = "nhwc")]
        paths: Vec<ForwardPath>,
        /// The same network as an ONNX file, for the `onnx` path.
        #[arg(long)]
        onnx: Option<PathBuf>,
    },
    /// Run an ONNX graph's first input on a float32 .npy array; write its first output as .npy.
    Infer {
        /// The ONNX model file.
        #[arg(long)]
        onnx: PathBuf,
        /// float32 .npy input.
        #[arg(long)]
        input: PathBuf,
        /// Where the first output goes (.npy, float32).
        #[arg(long)]
        output: PathBuf,
        /// burn backend.
        #[arg(long, env = "SCOREFLEET_BACKEND")]
        backend: Option<BackendKind>,
    },
    /// Run one random input through onnxruntime (the venv's) and through the
    /// runner; print the largest absolute and relative difference.
    Check {
        /// The ONNX model file.
        #[arg(long)]
        onnx: PathBuf,
        /// Batch size where the graph's batch dimension is dynamic.
        #[arg(long, default_value_t = 2)]
        batch: usize,
        /// The Python with onnxruntime.
        #[arg(long, env = "SCOREFLEET_PYTHON", default_value = ".venv/bin/python")]
        python: PathBuf,
        /// burn backend.
        #[arg(long, env = "SCOREFLEET_BACKEND")]
        backend: Option<BackendKind>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Print an ONNX graph's inputs, outputs, opset, operator counts and
    /// whether the runner executes every operator.
    Inspect {
        /// The ONNX model file.
        #[arg(long)]
        onnx: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Run the ONNX backend test suite (as `bench/python/onnx_backend_data.py`
    /// writes it) through the runner.
    Conformance {
        /// Directory holding `node/` and `light/`.
        #[arg(long)]
        data: PathBuf,
        /// Suites, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "node,light")]
        suite: Vec<String>,
        /// Node cases per claimed operator (0: all).
        #[arg(long, default_value_t = 0)]
        sample: usize,
        /// One JSON object per case.
        #[arg(long)]
        json: bool,
        /// burn backend.
        #[arg(long, env = "SCOREFLEET_BACKEND")]
        backend: Option<BackendKind>,
        /// `auto`: the CPU kernels and folding the backend gets by default;
        /// `burn`: every node on burn's own op.
        #[arg(long, value_enum, default_value = "auto")]
        kernels: Kernels,
    },
}

/// Which ONNX runner options a command uses.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Kernels {
    /// [`Options::for_device`].
    Auto,
    /// [`Options::burn_only`].
    Burn,
}

impl Kernels {
    fn options(self, device: &burn::tensor::Device) -> Options {
        match self {
            Kernels::Auto => Options::for_device(device),
            Kernels::Burn => Options::burn_only(),
        }
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Train { model, data, out, epochs, batch_size, lr, lr_decay, seed, backend } => {
            if model != "digits" {
                bail!("only `digits` is trained by this command (resnet18 weights are imported from PyTorch)");
            }
            let backend = pick(backend)?;
            let data = data.unwrap_or_else(mnist::default_dir);
            let out = out.unwrap_or_else(|| repo_manifest("digits").parent().map(PathBuf::from).unwrap_or_default());
            let train_set = Mnist::train(&data)?;
            let test_set = Mnist::test(&data)?;
            let config = TrainConfig { epochs, batch_size, lr, lr_decay, seed };
            eprintln!("training digits on {} images with {config:?} on {backend}", train_set.len());
            let net = train::train(&train_set, &test_set, &config, &backend.device())?;
            let accuracy = train::evaluate(&net, &test_set, 500, &backend.device())?;
            std::fs::create_dir_all(&out).with_context(|| out.display().to_string())?;
            let weights_path = out.join("digits.safetensors");
            weights::save_pytorch_safetensors(&net, &weights_path)?;
            let bytes = std::fs::read(&weights_path)?;
            let manifest = Manifest {
                name: "digits".into(),
                architecture: "digits".into(),
                input_shape: [1, digits::SIDE, digits::SIDE],
                channels: Channels::Grayscale,
                mean: vec![digits::MEAN],
                std: vec![digits::STD],
                invert: false,
                labels: (0..10).map(|d| d.to_string()).collect(),
                labels_file: None,
                weights: "digits.safetensors".into(),
                sha256: weights::sha256_hex(&bytes),
                notes: Some(format!(
                    "trained by `scorefleet-model train --model digits --epochs {epochs} --batch-size {batch_size} \
                     --lr {lr} --lr-decay {lr_decay} --seed {seed} --backend {backend}`; MNIST test accuracy {accuracy:.4}"
                )),
                ..Manifest::default()
            };
            std::fs::write(out.join("manifest.json"), serde_json::to_string_pretty(&manifest)? + "\n")?;
            println!(
                "{}",
                serde_json::json!({"model": "digits", "accuracy": accuracy, "weights": weights_path, "sha256": manifest.sha256})
            );
        }
        Command::Eval { model, manifest, data, limit, json, backend } => {
            let backend = pick(backend)?;
            let manifest_path = manifest.unwrap_or_else(|| repo_manifest(&model));
            let data = data.unwrap_or_else(mnist::default_dir);
            let mut test_set = Mnist::test(&data)?;
            if let Some(n) = limit {
                test_set = test_set.take(n);
            }
            // The path the predictor serves: the NHWC network, or the ONNX runner for an onnx manifest.
            let m = futures::executor::block_on(scorefleet_model::load_model(
                &manifest_path,
                None,
                &std::env::temp_dir().join("scorefleet-models"),
                &weights::NoFetcher,
                backend,
            ))?;
            let path = if matches!(m.network, Network::Onnx(_)) { "onnx" } else { "nhwc" };
            let start = std::time::Instant::now();
            let accuracy = train::evaluate_with(|x| m.network.forward(x), &test_set, 500, &backend.device())?;
            let secs = start.elapsed().as_secs_f64();
            let report = serde_json::json!({
                "model": m.manifest.name, "version": m.manifest.version(), "accuracy": accuracy,
                "images": test_set.len(), "backend": backend.as_str(), "path": path, "seconds": secs,
            });
            if json {
                println!("{report}");
            } else {
                println!(
                    "{} {}: accuracy {accuracy:.4} on {} MNIST test images ({backend}, {secs:.1}s)",
                    m.manifest.name,
                    m.manifest.version(),
                    test_set.len()
                );
            }
        }
        Command::Bench { arch, weights: wpath, input, classes, batches, backends, min_seconds, paths, onnx } => {
            let raw = std::fs::read(&input).with_context(|| input.display().to_string())?;
            let st = safetensors::SafeTensors::deserialize(&raw)?;
            let t = st.tensor("input")?;
            let shape = t.shape().to_vec();
            if shape.len() != 4 {
                bail!("input must be [n, c, h, w], found {shape:?}");
            }
            let chw = [shape[1], shape[2], shape[3]];
            let data: Vec<f32> =
                t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            let backends = if backends.is_empty() { BackendKind::all() } else { backends };
            // The built-in network's weights, read once, for the nhwc and reference paths.
            let builtin_paths = [ForwardPath::Nhwc, ForwardPath::Reference, ForwardPath::NhwcIm2col];
            let weights = if paths.iter().any(|p| builtin_paths.contains(p)) {
                let wpath = wpath.as_ref().context("--paths nhwc and reference need --weights FILE")?;
                let bytes = std::fs::read(wpath).with_context(|| wpath.display().to_string())?;
                Some((bytes, wpath.display().to_string()))
            } else {
                None
            };
            for backend in backends {
                let device = backend.device();
                let builtin = match &weights {
                    Some((bytes, name)) => Some(Network::load(&arch, classes, bytes.clone(), name, &device)?),
                    None => None,
                };
                let builtin_im2col = match &weights {
                    Some((bytes, name)) if paths.contains(&ForwardPath::NhwcIm2col) => {
                        Some(Network::load_with(&arch, classes, bytes.clone(), name, &device, None)?)
                    }
                    _ => None,
                };
                for &path in &paths {
                    let graph_net;
                    let net = match path {
                        ForwardPath::Onnx | ForwardPath::OnnxBurn | ForwardPath::OnnxIm2col => {
                            let file = onnx.as_ref().context("--paths onnx needs --onnx FILE")?;
                            let bytes = std::fs::read(file).with_context(|| file.display().to_string())?;
                            let options = match path {
                                ForwardPath::Onnx => Options::for_device(&device),
                                ForwardPath::OnnxIm2col => Options { winograd: None, ..Options::for_device(&device) },
                                _ => Options::burn_only(),
                            };
                            let model = OnnxModel::from_bytes_with(&bytes, &device, options)?;
                            let manifest = Manifest { input_shape: chw, ..Manifest::default() };
                            let name = file.display().to_string();
                            graph_net = Network::Onnx(Box::new(scorefleet_model::predictor::OnnxNet::new(
                                model, &manifest, &name,
                            )?));
                            &graph_net
                        }
                        ForwardPath::Nhwc | ForwardPath::Reference => {
                            builtin.as_ref().context("--paths nhwc and reference need --weights FILE")?
                        }
                        ForwardPath::NhwcIm2col => {
                            builtin_im2col.as_ref().context("--paths nhwc-im2col needs --weights FILE")?
                        }
                    };
                    let rows = bench_network(
                        &arch,
                        net,
                        backend,
                        path,
                        BenchInput { images: &data, chw },
                        &batches,
                        std::time::Duration::from_secs_f64(min_seconds),
                    )?;
                    for row in rows {
                        println!("{}", serde_json::to_string(&row)?);
                    }
                }
            }
        }
        Command::Infer { onnx, input, output, backend } => {
            let device = pick(backend)?.device();
            let model = onnx_model(&onnx, &device)?;
            let (data, shape) = read_npy(&input)?;
            let x = Value::floats(data, shape, &device).map_err(anyhow::Error::msg)?;
            let y = first_output(&model, x)?;
            write_npy(&output, &y.to_f32s().map_err(anyhow::Error::msg)?, &y.shape)?;
            eprintln!(
                "{}: {:?} → {:?} in {}",
                onnx.display(),
                model.inspection.inputs[0].shape_string(),
                y.shape,
                output.display()
            );
        }
        Command::Check { onnx, batch, python, backend, json } => {
            let device = pick(backend)?.device();
            let model = onnx_model(&onnx, &device)?;
            let port = model.inspection.inputs.first().context("the graph has no input")?;
            let shape: Vec<usize> =
                port.shape.iter().enumerate().map(|(i, d)| d.unwrap_or(if i == 0 { batch } else { 1 })).collect();
            let n: usize = shape.iter().product();
            let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(7);
            let data: Vec<f32> = (0..n).map(|_| rand::Rng::random_range(&mut rng, -1.0f32..1.0)).collect();
            let dir = std::env::temp_dir().join(format!("scorefleet-check-{}", std::process::id()));
            std::fs::create_dir_all(&dir)?;
            let (inp, out) = (dir.join("input.npy"), dir.join("ort.npy"));
            write_npy(&inp, &data, &shape)?;
            let status = std::process::Command::new(&python)
                .arg(scorefleet_model::manifest::repo_root().join("bench/python/ort_run.py"))
                .args([&onnx, &inp, &out])
                .status()
                .with_context(|| format!("running {} (onnxruntime; `make test` creates .venv)", python.display()))?;
            if !status.success() {
                bail!("onnxruntime failed on {}", onnx.display());
            }
            let (want, want_shape) = read_npy(&out)?;
            let y = first_output(&model, Value::floats(data, shape, &device).map_err(anyhow::Error::msg)?)?;
            let got = y.to_f32s().map_err(anyhow::Error::msg)?;
            std::fs::remove_dir_all(&dir).ok();
            if y.shape != want_shape {
                bail!("output shape {:?}, onnxruntime {:?}", y.shape, want_shape);
            }
            let abs = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            let scale = want.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
            let rel = if scale > 0.0 { abs / scale } else { abs };
            if json {
                println!(
                    "{}",
                    serde_json::json!({"model": onnx, "shape": y.shape, "max_abs_diff": abs, "max_rel_diff": rel})
                );
            } else {
                println!(
                    "{}: output {:?}, max |diff| {abs:.3e}, relative to max |output| {rel:.3e}",
                    onnx.display(),
                    y.shape
                );
            }
        }
        Command::Inspect { onnx, json } => {
            let bytes = std::fs::read(&onnx).with_context(|| onnx.display().to_string())?;
            let i = OnnxModel::inspect(&bytes)?;
            let port = |p: &scorefleet_model::onnx::Port| serde_json::json!({"name": p.name, "dtype": p.dtype, "shape": p.shape});
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "inputs": i.inputs.iter().map(port).collect::<Vec<_>>(),
                        "outputs": i.outputs.iter().map(port).collect::<Vec<_>>(),
                        "opset": i.opset, "operators": i.operators,
                        "supported": i.unsupported.is_empty(), "unsupported": i.unsupported,
                    })
                );
            } else {
                println!("{} (opset {})", onnx.display(), i.opset);
                for p in &i.inputs {
                    println!("  input  {} {} {}", p.name, p.dtype, p.shape_string());
                }
                for p in &i.outputs {
                    println!("  output {} {} {}", p.name, p.dtype, p.shape_string());
                }
                for (op, n) in &i.operators {
                    println!("  {op:<24} {n}");
                }
                if i.unsupported.is_empty() {
                    println!("every operator is supported");
                } else {
                    for u in &i.unsupported {
                        println!("  unsupported: {u}");
                    }
                }
            }
            if !i.unsupported.is_empty() {
                std::process::exit(1);
            }
        }
        Command::Conformance { data, suite, sample, json, backend, kernels } => {
            use scorefleet_model::onnx::conformance::{CLAIMED, case_dirs, case_op, run_case};
            let device = pick(backend)?.device();
            let mut results = Vec::new();
            for s in &suite {
                let mut per_op: std::collections::BTreeMap<String, usize> = Default::default();
                for dir in case_dirs(&data, s) {
                    if s == "node" {
                        let op = case_op(&dir);
                        if !op.split('+').all(|o| CLAIMED.contains(&o)) {
                            continue;
                        }
                        let taken = per_op.entry(op).or_default();
                        if sample > 0 && *taken >= sample {
                            continue;
                        }
                        *taken += 1;
                    }
                    let r = run_case(&dir, s, &device, kernels.options(&device));
                    if json {
                        println!("{}", serde_json::to_string(&r)?);
                    } else if !r.passed {
                        println!("FAIL {} {} ({}): {}", r.suite, r.case, r.op, r.reason);
                    }
                    results.push(r);
                }
            }
            if !json {
                // passed, refused at load (by design), failed at run time
                let mut table: std::collections::BTreeMap<(String, String), [usize; 3]> = Default::default();
                for r in &results {
                    let e = table.entry((r.suite.clone(), r.op.clone())).or_default();
                    let col = if r.passed {
                        0
                    } else if r.reason.starts_with("refused at load") {
                        1
                    } else {
                        2
                    };
                    e[col] += 1;
                }
                println!("| suite | operator | passed | refused at load | failed |\n|---|---|---|---|---|");
                for ((s, op), [p, r, f]) in &table {
                    println!("| {s} | {op} | {p} | {r} | {f} |");
                }
                let passed = results.iter().filter(|r| r.passed).count();
                println!("{passed} of {} cases passed", results.len());
            }
        }
    }
    Ok(())
}

fn onnx_model(path: &std::path::Path, device: &burn::tensor::Device) -> Result<OnnxModel> {
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    OnnxModel::from_bytes(&bytes, device).with_context(|| path.display().to_string())
}

fn first_output(model: &OnnxModel, x: Value) -> Result<Value> {
    let mut inputs = vec![x];
    if model.inspection.inputs.len() != 1 {
        bail!("the graph takes {} inputs; infer and check feed only the first", model.inspection.inputs.len());
    }
    let mut outs = model.run(std::mem::take(&mut inputs))?;
    if outs.is_empty() {
        bail!("the graph has no output");
    }
    Ok(outs.remove(0))
}

fn read_npy(path: &std::path::Path) -> Result<(Vec<f32>, Vec<usize>)> {
    let bytes = std::fs::read(path).with_context(|| path.display().to_string())?;
    let npy = npyz::NpyFile::new(&bytes[..]).with_context(|| path.display().to_string())?;
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let data = npy.into_vec::<f32>().with_context(|| format!("{}: expected float32", path.display()))?;
    Ok((data, shape))
}

fn write_npy(path: &std::path::Path, data: &[f32], shape: &[usize]) -> Result<()> {
    let mut out = Vec::new();
    {
        let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        let mut w = npyz::WriteOptions::<f32>::new().default_dtype().shape(&dims).writer(&mut out).begin_nd()?;
        w.extend(data.iter().copied())?;
        w.finish()?;
    }
    std::fs::write(path, out).with_context(|| path.display().to_string())?;
    Ok(())
}

fn pick(backend: Option<BackendKind>) -> Result<BackendKind> {
    match backend.or_else(BackendKind::default_kind) {
        Some(b) => Ok(b),
        None => bail!("no burn backend compiled in: enable the `flex` or `ndarray` feature"),
    }
}
