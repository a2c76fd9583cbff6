//! `scorefleet-model`: train, evaluate and benchmark the burn classifiers.
//!
//! ```text
//! scorefleet-model train --model digits [--epochs 4] [--out models/digits]
//! scorefleet-model eval  --model digits [--json] [--limit N]
//! scorefleet-model bench --manifest models/resnet18/manifest.json --batches 1,8,32 --json
//! ```

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use scorefleet_model::backend::BackendKind;
use scorefleet_model::bench::{BenchInput, ForwardPath, bench_network};
use scorefleet_model::digits::DigitsNhwc;
use scorefleet_model::manifest::{Channels, Manifest, repo_manifest};
use scorefleet_model::mnist::{self, Mnist};
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
        /// `digits` or `resnet18`.
        #[arg(long)]
        arch: String,
        /// PyTorch-layout safetensors weights.
        #[arg(long)]
        weights: PathBuf,
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
        /// Forward paths, comma-separated: `nhwc` (served) and/or `reference` (burn modules).
        #[arg(long, value_delimiter = ',', default_value = "nhwc")]
        paths: Vec<ForwardPath>,
    },
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
            let loaded = scorefleet_model::predictor::load_digits_net(&manifest_path, &backend.device())?;
            // The path the predictor serves (NHWC), not the burn module's forward.
            let served = DigitsNhwc::new(&loaded.1)?;
            let start = std::time::Instant::now();
            let accuracy = train::evaluate_with(|x| served.forward(x), &test_set, 500, &backend.device())?;
            let secs = start.elapsed().as_secs_f64();
            let report = serde_json::json!({
                "model": loaded.0.name, "version": loaded.0.version(), "accuracy": accuracy,
                "images": test_set.len(), "backend": backend.as_str(), "path": "nhwc", "seconds": secs,
            });
            if json {
                println!("{report}");
            } else {
                println!(
                    "{} {}: accuracy {accuracy:.4} on {} MNIST test images ({backend}, {secs:.1}s)",
                    loaded.0.name,
                    loaded.0.version(),
                    test_set.len()
                );
            }
        }
        Command::Bench { arch, weights: wpath, input, classes, batches, backends, min_seconds, paths } => {
            let bytes = std::fs::read(&wpath).with_context(|| wpath.display().to_string())?;
            let raw = std::fs::read(&input).with_context(|| input.display().to_string())?;
            let st = safetensors::SafeTensors::deserialize(&raw)?;
            let t = st.tensor("input")?;
            let shape = t.shape().to_vec();
            if shape.len() != 4 {
                bail!("input must be [n, c, h, w], found {shape:?}");
            }
            let data: Vec<f32> =
                t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            let backends = if backends.is_empty() { BackendKind::all() } else { backends };
            for backend in backends {
                let net =
                    Network::load(&arch, classes, bytes.clone(), &wpath.display().to_string(), &backend.device())?;
                for &path in &paths {
                    let rows = bench_network(
                        &arch,
                        &net,
                        backend,
                        path,
                        BenchInput { images: &data, chw: [shape[1], shape[2], shape[3]] },
                        &batches,
                        std::time::Duration::from_secs_f64(min_seconds),
                    )?;
                    for row in rows {
                        println!("{}", serde_json::to_string(&row)?);
                    }
                }
            }
        }
    }
    Ok(())
}

fn pick(backend: Option<BackendKind>) -> Result<BackendKind> {
    match backend.or_else(BackendKind::default_kind) {
        Some(b) => Ok(b),
        None => bail!("no burn backend compiled in: enable the `flex` or `ndarray` feature"),
    }
}
