//! The burn backends this build can run on, chosen by Cargo feature.
//!
//! burn 0.22 dispatches every tensor operation through [`Device`]: the backend
//! is a run-time value, so one binary can benchmark several backends.

use burn::tensor::Device;
use std::fmt;
use std::str::FromStr;

/// A burn backend compiled into this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// burn-flex, burn's native CPU backend (the default: fastest measured here).
    #[cfg(feature = "flex")]
    Flex,
    /// burn-ndarray, the older CPU backend.
    #[cfg(feature = "ndarray")]
    Ndarray,
    /// wgpu (GPU), never built in CI.
    #[cfg(feature = "wgpu")]
    Wgpu,
}

impl BackendKind {
    /// Every backend compiled in, the default first.
    pub fn all() -> Vec<BackendKind> {
        vec![
            #[cfg(feature = "flex")]
            BackendKind::Flex,
            #[cfg(feature = "ndarray")]
            BackendKind::Ndarray,
            #[cfg(feature = "wgpu")]
            BackendKind::Wgpu,
        ]
    }

    /// The backend used when none is named: the first compiled in.
    pub fn default_kind() -> Option<BackendKind> {
        Self::all().into_iter().next()
    }

    /// The stable lower-case name (`flex`, `ndarray`, `wgpu`).
    pub fn as_str(self) -> &'static str {
        match self {
            #[cfg(feature = "flex")]
            BackendKind::Flex => "flex",
            #[cfg(feature = "ndarray")]
            BackendKind::Ndarray => "ndarray",
            #[cfg(feature = "wgpu")]
            BackendKind::Wgpu => "wgpu",
        }
    }

    /// Whether this backend runs on the CPU, in host memory.
    pub fn is_cpu(self) -> bool {
        match self {
            #[cfg(feature = "flex")]
            BackendKind::Flex => true,
            #[cfg(feature = "ndarray")]
            BackendKind::Ndarray => true,
            #[cfg(feature = "wgpu")]
            BackendKind::Wgpu => false,
        }
    }

    /// The inference device of this backend.
    pub fn device(self) -> Device {
        match self {
            #[cfg(feature = "flex")]
            BackendKind::Flex => Device::flex(),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)] // kept for comparison in the benchmark
            BackendKind::Ndarray => Device::ndarray(),
            #[cfg(feature = "wgpu")]
            BackendKind::Wgpu => Device::wgpu(burn::tensor::DeviceKind::DefaultDevice),
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for BackendKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::all()
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| format!("backend {s:?} is not compiled in (have: {:?})", Self::all()))
    }
}

/// Whether `device` computes in host memory (burn-flex, burn-ndarray), where
/// the runner's CPU kernels may stand in for burn's ops.
pub fn is_host(device: &Device) -> bool {
    BackendKind::all().into_iter().filter(|k| k.is_cpu()).any(|k| k.device() == *device)
}
