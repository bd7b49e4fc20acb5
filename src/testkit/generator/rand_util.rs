//! Small random helpers that cannot panic on the edge values configs allow.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// True with probability `p`; never draws when `p <= 0`, so a disabled feature does
/// not shift the random stream of the features that are enabled.
#[inline]
pub(super) fn chance(rng: &mut ChaCha8Rng, p: f64) -> bool {
    p > 0.0 && rng.random::<f64>() < p
}

/// Uniform in `lo..=hi`; `lo` when the range is empty.
#[inline]
pub(super) fn between(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> u64 {
    if hi <= lo {
        lo
    } else {
        rng.random_range(lo..=hi)
    }
}

/// Log-uniform in `[lo, hi]` nanoseconds: durations spread over orders of magnitude,
/// as latencies do.
#[inline]
pub(super) fn log_between(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> u64 {
    if hi <= lo || lo == 0 {
        return between(rng, lo, hi);
    }
    let (l, h) = ((lo as f64).ln(), (hi as f64).ln());
    let v = (l + (h - l) * rng.random::<f64>()).exp() as u64;
    v.clamp(lo, hi)
}
