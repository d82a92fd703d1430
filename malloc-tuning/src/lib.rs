//! glibc's allocator tuned for a long-running server (ADR 038).
//!
//! glibc serves an allocation of at least `M_MMAP_THRESHOLD` bytes (128 KiB at start) with its
//! own `mmap`, given back to the system when freed. But the threshold is dynamic: freeing such a
//! block raises it to that block's size (up to 32 MiB), and from then on blocks of that size come
//! from the heap's arenas, which keep what is freed unless it sits at the top of an arena above
//! `M_TRIM_THRESHOLD` (raised along with it). A server that builds large transient buffers — a
//! read model serialized for its checkpoint every 30 s, an export, a query's rows — then holds
//! each buffer's size for good, and more as they grow: in a 5-minute soak at 960 requests/s the
//! resident memory rose in steps at every checkpoint (152 → 400 MiB after the warm-up); with both
//! thresholds fixed at 128 KiB it rose 148 → 256 MiB (docs/perf.md). Setting either threshold
//! explicitly turns the dynamic adjustment off.
#![allow(unsafe_code)]

/// Both thresholds, in bytes: glibc's own starting value for the mmap threshold.
pub const THRESHOLD: usize = 128 * 1024;

/// Fix glibc's mmap and trim thresholds at [`THRESHOLD`]: every block of at least that size is
/// mapped and unmapped on its own, and a heap's free top is given back past it. True when glibc
/// took both; false elsewhere (another C library: nothing to tune).
pub fn tune_for_server() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let threshold = THRESHOLD as libc::c_int;
        // SAFETY: `mallopt` changes allocator parameters only; glibc takes its arena locks, so it
        // may be called at any time from any thread, and it reads no memory of ours. It answers 1
        // on success and 0 for a parameter or value it does not take.
        let mmap = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, threshold) };
        // SAFETY: as above.
        let trim = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, threshold) };
        mmap == 1 && trim == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
