//! Output helpers shared by the demo and the benchmarks: report files, sizes, progress bars.

use std::path::{Path, PathBuf};

/// Writes a JSON report to `dir/name-<unix seconds>.json` and returns the path.
pub fn write_json(
    dir: &Path,
    name: &str,
    value: &impl serde::Serialize,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let path = dir.join(format!("{name}-{secs}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(value)?)?;
    Ok(path)
}

/// `1234567` → `"1.18 MiB"`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.2} {}", UNITS[u])
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn progress_bar(len: u64, template: &str) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
        pb.set_style(style);
    }
    pb
}

/// A bench setting that does not validate, as the CLI reports it (naming its flag).
pub(crate) fn config_error(e: handoff_bench::ConfigError) -> anyhow::Error {
    match e {
        handoff_bench::ConfigError::OutOfRange { .. } => anyhow::anyhow!("--{e}"),
        handoff_bench::ConfigError::NoLoadFor { .. } => anyhow::anyhow!("{e}"),
    }
}

/// The load generator's attach and measured-phase lines and its latency line (the demo's and
/// `handoff loadgen`'s readable reports share them).
pub fn load_lines(l: &handoff_loadgen::LoadReport) -> [String; 3] {
    [
        format!(
            "  attach phase   {} UEs registered in {} ms (p50 {} us, p99 {} us)",
            l.attached, l.attach_ms, l.attach_latency_us.p50, l.attach_latency_us.p99
        ),
        format!(
            "  measured phase {:.0} procedures/s for {} ms",
            l.measured_rate, l.measured_ms
        ),
        format!(
            "  latency us     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            l.latency_us.p50,
            l.latency_us.p90,
            l.latency_us.p99,
            l.latency_us.p999,
            l.latency_us.max
        ),
    ]
}
