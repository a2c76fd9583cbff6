//! Reader for the MNIST IDX files (gzipped), as shipped in `data/mnist/`.
//!
//! IDX: a big-endian magic (`0x00000803` images, `0x00000801` labels), the
//! dimensions as big-endian u32, then the raw `u8` values.

use crate::error::ModelError;
use flate2::read::GzDecoder;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Side of an MNIST image in pixels.
pub const SIDE: usize = 28;

/// A split of MNIST: raw pixels and labels.
#[derive(Debug, Clone)]
pub struct Mnist {
    /// `len * 28 * 28` grey values, 0 = background, row-major.
    pub images: Vec<u8>,
    /// One label 0–9 per image.
    pub labels: Vec<u8>,
}

impl Mnist {
    /// How many images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The `i`-th image's 784 pixels.
    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * SIDE * SIDE..(i + 1) * SIDE * SIDE]
    }

    /// The training split (60,000) from `dir`.
    pub fn train(dir: &Path) -> Result<Self, ModelError> {
        Self::load(&dir.join("train-images.idx3-ubyte.gz"), &dir.join("train-labels.idx1-ubyte.gz"))
    }

    /// The test split (10,000) from `dir`.
    pub fn test(dir: &Path) -> Result<Self, ModelError> {
        Self::load(&dir.join("t10k-images.idx3-ubyte.gz"), &dir.join("t10k-labels.idx1-ubyte.gz"))
    }

    /// Reads an images file and its labels file.
    pub fn load(images: &Path, labels: &Path) -> Result<Self, ModelError> {
        let (idims, ibytes) = read_idx(images, 0x0803)?;
        let (ldims, lbytes) = read_idx(labels, 0x0801)?;
        let bad = |m: String| ModelError::Data { path: images.display().to_string(), message: m };
        if idims.len() != 3 || idims[1] != SIDE || idims[2] != SIDE {
            return Err(bad(format!("expected [n, 28, 28], found {idims:?}")));
        }
        if ldims.len() != 1 || ldims[0] != idims[0] {
            return Err(bad(format!("{} labels for {} images", ldims.first().copied().unwrap_or(0), idims[0])));
        }
        if let Some(l) = lbytes.iter().find(|&&l| l > 9) {
            return Err(bad(format!("label {l} out of range")));
        }
        Ok(Mnist { images: ibytes, labels: lbytes })
    }

    /// The first `n` images only (a CI-sized sample).
    pub fn take(mut self, n: usize) -> Self {
        let n = n.min(self.len());
        self.images.truncate(n * SIDE * SIDE);
        self.labels.truncate(n);
        self
    }
}

/// The default data directory, `data/mnist` at the workspace root.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist")
}

fn read_idx(path: &Path, magic: u32) -> Result<(Vec<usize>, Vec<u8>), ModelError> {
    let file = std::fs::File::open(path).map_err(|e| ModelError::io(path, e))?;
    let mut raw = Vec::new();
    GzDecoder::new(file).read_to_end(&mut raw).map_err(|e| ModelError::io(path, e))?;
    let bad = |m: &str| ModelError::Data { path: path.display().to_string(), message: m.to_string() };
    let word = |i: usize| -> Result<usize, ModelError> {
        raw.get(i * 4..i * 4 + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .ok_or_else(|| bad("truncated header"))
    };
    if word(0)? != magic as usize {
        return Err(bad("wrong IDX magic"));
    }
    let ndims = magic as usize & 0xff;
    let dims = (1..=ndims).map(word).collect::<Result<Vec<_>, _>>()?;
    let body = &raw[(1 + ndims) * 4..];
    if body.len() != dims.iter().product::<usize>() {
        return Err(bad("body length does not match the dimensions"));
    }
    Ok((dims, body.to_vec()))
}
