//! Picking a port for a cluster.
//!
//! Ports come from below the kernel's ephemeral range: a port the kernel hands out for an
//! outgoing connection (e.g. to port 0 in another test) cannot then collide with a cluster that
//! restarts on its fixed port. Candidates are spread pseudo-randomly so that concurrent test
//! processes rarely try the same one; a bind probe rejects ports in use right now, and a start
//! that still loses the race is retried on another port by the caller.

use std::net::{Ipv4Addr, TcpListener};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lowest port handed out: well above the registered ports of common local services.
const LOW: u16 = 15_000;

/// The first port of the kernel's ephemeral range, from
/// `/proc/sys/net/ipv4/ip_local_port_range` ("32768\t60999" on a stock kernel).
pub(crate) fn ephemeral_start(range_file: Option<&str>) -> u16 {
    range_file
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// The half-open range `[low, high)` to pick from, given where the ephemeral range starts.
/// A kernel configured with a very low ephemeral start leaves too little room below it; then
/// the ports above the default ephemeral end are used instead.
pub(crate) fn port_range(ephemeral_start: u16) -> (u16, u16) {
    if ephemeral_start >= LOW + 1_000 {
        (LOW, ephemeral_start)
    } else {
        (61_000, 65_535)
    }
}

/// `count` candidate ports in `[low, high)`, in an order fixed by `seed`: a linear congruential
/// walk, so consecutive candidates are far apart and two seeds rarely share a prefix.
pub(crate) fn candidates(seed: u64, low: u16, high: u16, count: usize) -> Vec<u16> {
    assert!(low < high, "empty port range {low}..{high}");
    let span = u64::from(high - low);
    let mut state = seed;
    (0..count)
        .map(|_| {
            // Knuth's MMIX constants; the high bits are the well-mixed ones.
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            low + ((state >> 33) % span) as u16
        })
        .collect()
}

/// A port nothing on 127.0.0.1 listens on right now.
pub(crate) fn pick_free_port() -> std::io::Result<u16> {
    static CALLS: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let seed = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ CALLS
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let range_file = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let (low, high) = port_range(ephemeral_start(range_file.as_deref()));
    for port in candidates(seed, low, high, 200) {
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::AddrInUse,
        format!("no free port found in {low}..{high} after 200 tries"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ephemeral_start_reads_the_proc_file_or_defaults() {
        assert_eq!(ephemeral_start(Some("32768\t60999\n")), 32_768);
        assert_eq!(ephemeral_start(Some("40000 50000")), 40_000);
        assert_eq!(ephemeral_start(Some("garbage")), 32_768);
        assert_eq!(ephemeral_start(None), 32_768);
    }

    #[test]
    fn range_stays_below_the_ephemeral_range() {
        assert_eq!(port_range(32_768), (15_000, 32_768));
        assert_eq!(port_range(1_024), (61_000, 65_535));
    }

    #[test]
    fn candidates_stay_in_range_spread_out_and_depend_on_the_seed() {
        let a = candidates(1, 15_000, 32_768, 200);
        assert!(a.iter().all(|p| (15_000..32_768).contains(p)));
        let mut distinct = a.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(
            distinct.len() > 190,
            "only {} distinct of 200",
            distinct.len()
        );
        assert_ne!(a[..4], candidates(2, 15_000, 32_768, 4)[..]);
        assert_eq!(a, candidates(1, 15_000, 32_768, 200));
    }

    #[test]
    fn picked_port_is_bindable() {
        let port = pick_free_port().expect("a free port");
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("port is free");
    }
}
