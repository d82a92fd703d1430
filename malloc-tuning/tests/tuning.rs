//! In a real process (nextest runs each test in its own): once tuned, a large buffer that is
//! built, used and dropped over and over leaves no resident memory behind.

/// Resident memory of this process, from `/proc/self/statm` (pages × 4 KiB).
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: usize = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

/// Build and drop buffers of 24 MiB, then 20 MiB (a checkpoint's state, a little smaller the next
/// time), each written through so that its pages are resident while it lives.
fn churn() {
    for size in [24usize << 20, 20 << 20, 24 << 20, 20 << 20] {
        let mut buffer = Vec::with_capacity(size);
        buffer.resize(size, 0x5a_u8);
        std::hint::black_box(&buffer);
    }
}

#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn large_transient_buffers_are_given_back_once_tuned() {
    assert!(malloc_tuning::tune_for_server(), "glibc took both settings");
    let before = resident_bytes();
    churn();
    let held = resident_bytes().saturating_sub(before);
    assert!(
        held < 4 << 20,
        "{held} bytes still resident after the buffers were dropped"
    );
}

#[test]
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn untuned_glibc_keeps_them() {
    // The control: without the tuning glibc raises its thresholds and keeps a buffer's worth.
    let before = resident_bytes();
    churn();
    let held = resident_bytes().saturating_sub(before);
    assert!(
        held >= 16 << 20,
        "only {held} bytes held: this glibc does not show the problem"
    );
}
