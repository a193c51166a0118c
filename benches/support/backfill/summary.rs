//! What the reports of `benches/backfill.rs` and `benches/e2e.rs` share: the
//! median of repeated runs and the spread of paired ratios, the load average beside it, and the target
//! directory the results are written under.

use std::borrow::Borrow;
use std::path::{Path, PathBuf};

/// The median (mean of the middle two for an even count), NaNs left out;
/// NaN when nothing is left.
pub fn median<T: Borrow<f64>>(values: impl IntoIterator<Item = T>) -> f64 {
    let mut v: Vec<f64> = values
        .into_iter()
        .map(|x| *x.borrow())
        .filter(|x| !x.is_nan())
        .collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    }
}

/// Ratios as `median x (min-max)`, e.g. `1.09x (0.87-1.62)`: how paired
/// ratios are reported.
pub fn ratio_spread(ratios: &[f64]) -> String {
    let lo = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = ratios.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{:.2}x ({lo:.2}-{hi:.2})", median(ratios))
}

/// The 1, 5 and 15 minute load averages: the noise other processes add.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The target directory: the one cargo built the walshift binary in
/// (`<target>/release/walshift`).
pub fn target_dir() -> PathBuf {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_walshift"));
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
}
