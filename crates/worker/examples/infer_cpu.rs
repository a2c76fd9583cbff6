//! The denominator of `bench/worker`'s pipeline efficiency: process
//! CPU-seconds per image of inference alone (and, for the breakdown, of PNG
//! decode + preprocessing alone), through the same model loading and the
//! same `Preprocessor`/`Predictor` as the worker, at a given batch size.
//!
//! ```text
//! infer_cpu [--manifest models/digits/manifest.json] [--batch 32] [--images 5000] [--top-k 3] [--threads 1]
//! ```
//!
//! Prints one JSON object: `{"batch", "images", "infer_cpu_s_per_image",
//! "preprocess_cpu_s_per_image", "backend"}`. CPU time is the whole process's
//! (every thread, user + system), read from `/proc/self/stat`. Like the
//! worker, it runs the model inside a rayon pool of `--threads` threads (the
//! worker's `--infer-threads`) and allocates with mimalloc.

use scorefleet_core::traits::{Chw, Predictor, Preprocessor};
use std::io::Cursor;
use std::path::PathBuf;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let mut manifest = PathBuf::from("models/digits/manifest.json");
    let (mut batch, mut images, mut top_k, mut threads) = (32usize, 5000usize, 3usize, 1usize);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().ok_or_else(|| anyhow::anyhow!("{a} needs a value"));
        match a.as_str() {
            "--manifest" => manifest = PathBuf::from(value()?),
            "--batch" => batch = value()?.parse()?,
            "--images" => images = value()?.parse()?,
            "--top-k" => top_k = value()?.parse()?,
            "--threads" => threads = value()?.parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    anyhow::ensure!(batch > 0 && images > 0, "--batch and --images must be positive");
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build()?;
    pool.install(|| measure(&manifest, batch, images, top_k, threads))
}

fn measure(
    manifest: &std::path::Path,
    batch: usize,
    images: usize,
    top_k: usize,
    threads: usize,
) -> anyhow::Result<()> {
    let backend = scorefleet_model::BackendKind::default_kind().ok_or_else(|| anyhow::anyhow!("no backend"))?;
    let parsed = scorefleet_model::Manifest::load(manifest)?;
    let dir = manifest.parent().unwrap_or(std::path::Path::new("."));
    let weights = std::fs::read(parsed.weights_location(dir))?;
    let loaded = scorefleet_model::load_model_from_bytes(parsed, weights, "bench", backend)?;
    let (preprocessor, mut predictor) = loaded.into_parts(scorefleet_model::Limits::default());

    // The worker's input: MNIST test digits as PNG bytes.
    let mnist = scorefleet_model::mnist::Mnist::test(&scorefleet_model::mnist::default_dir())?;
    let pngs: Vec<Vec<u8>> = (0..images).map(|i| png(mnist.image(i % mnist.len()))).collect::<Result<_, _>>()?;

    // Whole passes over the images until each part has used at least
    // MIN_CPU_S, so the 10 ms tick of /proc is noise.
    const MIN_CPU_S: f64 = 2.0;
    let mut inputs: Vec<Chw> = Vec::new();
    let (mut preprocess_cpu, mut preprocessed) = (0.0, 0usize);
    while preprocess_cpu < MIN_CPU_S {
        let before = cpu_seconds()?;
        inputs = pngs.iter().map(|p| preprocessor.preprocess(p)).collect::<Result<_, _>>()?;
        preprocess_cpu += cpu_seconds()? - before;
        preprocessed += images;
    }

    // One warm-up batch (allocator, thread pool), then the timed passes.
    predictor.predict(&inputs[..batch.min(images)], top_k)?;
    let (mut infer_cpu, mut scored) = (0.0, 0usize);
    while infer_cpu < MIN_CPU_S {
        let before = cpu_seconds()?;
        for chunk in inputs.chunks(batch) {
            scored += predictor.predict(chunk, top_k)?.len();
        }
        infer_cpu += cpu_seconds()? - before;
    }
    anyhow::ensure!(scored % images == 0, "scored {scored}, not whole passes of {images}");

    println!(
        "{}",
        serde_json::json!({
            "backend": backend.as_str(),
            "batch": batch,
            "threads": threads,
            "images": images,
            "infer_cpu_s_per_image": infer_cpu / scored as f64,
            "preprocess_cpu_s_per_image": preprocess_cpu / preprocessed as f64,
        })
    );
    Ok(())
}

/// A 28×28 grey image as PNG.
fn png(pixels: &[u8]) -> anyhow::Result<Vec<u8>> {
    let img = image::GrayImage::from_raw(28, 28, pixels.to_vec()).ok_or_else(|| anyhow::anyhow!("bad MNIST image"))?;
    let mut out = Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

/// User + system CPU of this process, all threads. Linux's `/proc` counts in
/// clock ticks of 1/100 s (USER_HZ, fixed at 100 on every Linux ABI).
fn cpu_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line, the 12th and 13th after it.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).ok_or_else(|| anyhow::anyhow!("short /proc/self/stat"))?.parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}
