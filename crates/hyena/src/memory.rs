//! The memory guard: how much memory the machine has available ([`available_bytes`]) and a
//! check that an estimated size fits in it ([`check_fits`]), so that a model, a batch or a
//! generation too large for the machine is refused with a message before anything is
//! allocated, instead of the process aborting on a failed allocation. The estimators of each
//! model family live with it (`models::hyenadna::memory`).
//!
//! Sizes are computed with saturating `u64` arithmetic ([`mul`], [`floats`]), so a config with
//! `n_layer = 10^9` or `l_max = 10^12` gives a huge estimate, not an overflow.

use crate::error::{Error, Result};

/// Environment variable that overrides the available memory, in bytes (a plain integer, or
/// with a binary suffix `K`, `M`, `G`, `T`: `512M`, `2G`). For tests and for leaving memory to
/// other processes; an unparsable value is an error naming it.
pub const LIMIT_ENV: &str = "HYENA_MEMORY_LIMIT";

/// Assumed when the machine does not say how much memory is available (no `/proc/meminfo`):
/// large enough not to refuse real work, small enough to refuse the absurd sizes (hundreds of
/// GiB) that would otherwise abort the process.
pub const FALLBACK_BYTES: u64 = 64 << 30;

/// Bytes of memory the process may use: the value of [`LIMIT_ENV`] when it is set, otherwise
/// the kernel's `MemAvailable` (`/proc/meminfo`), otherwise [`FALLBACK_BYTES`].
pub fn available_bytes() -> Result<u64> {
    if let Ok(v) = std::env::var(LIMIT_ENV) {
        return parse_size(&v).ok_or_else(|| {
            Error::config(
                LIMIT_ENV,
                format!("{v:?}"),
                "give a size in bytes, optionally with a suffix K, M, G or T (e.g. 2G)",
            )
        });
    }
    Ok(std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| mem_available(&s))
        .unwrap_or(FALLBACK_BYTES))
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb.saturating_mul(1024))
}

/// A size: bytes, or with a binary suffix K, M, G, T (optionally followed by `B` or `iB`).
fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let t = s.trim_end_matches("iB").trim_end_matches('B');
    let (num, shift) = match t.chars().last()? {
        'k' | 'K' => (&t[..t.len() - 1], 10),
        'm' | 'M' => (&t[..t.len() - 1], 20),
        'g' | 'G' => (&t[..t.len() - 1], 30),
        't' | 'T' => (&t[..t.len() - 1], 40),
        _ => (t, 0),
    };
    let v: u64 = num.trim().parse().ok()?;
    v.checked_mul(1u64 << shift)
}

/// The product of `dims`, saturating at `u64::MAX`.
pub fn mul(dims: &[usize]) -> u64 {
    dims.iter()
        .fold(1u64, |acc, &d| acc.saturating_mul(d as u64))
}

/// Bytes of `n` f32 values, saturating.
pub fn floats(n: u64) -> u64 {
    n.saturating_mul(4)
}

/// Refuse `what` (e.g. "training hyenadna at batch 8 x 1024") when its estimated `bytes`
/// exceed the [`available_bytes`]: the message gives both in GiB and `reduce`, what the user
/// can make smaller (e.g. "--batch, --seq-len or the model's n_layer/d_model").
pub fn check_fits(what: &str, bytes: u64, reduce: &str) -> Result<()> {
    let avail = available_bytes()?;
    if bytes > avail {
        return Err(Error::Memory {
            what: what.to_string(),
            need: bytes,
            available: avail,
            hint: reduce.to_string(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("3k"), Some(3 << 10));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("99999999999T"), None);
    }

    #[test]
    fn meminfo_gives_mem_available_in_bytes() {
        let m = "MemTotal:  100 kB\nMemFree: 10 kB\nMemAvailable:   2048 kB\n";
        assert_eq!(mem_available(m), Some(2048 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
    }

    #[test]
    fn products_saturate() {
        assert_eq!(mul(&[2, 3, 4]), 24);
        assert_eq!(mul(&[usize::MAX, usize::MAX, 2]), u64::MAX);
        assert_eq!(floats(u64::MAX / 2), u64::MAX);
    }

    #[test]
    fn absurd_sizes_are_refused_with_both_numbers() {
        // Far above any machine's memory (and the fallback), whatever the environment says.
        let e = check_fits("a test model", u64::MAX, "its size").unwrap_err();
        let m = e.to_string();
        assert!(m.contains("a test model") && m.contains("GiB") && m.contains("its size"));
        check_fits("nothing", 0, "").unwrap();
    }
}
