//! How the broker process gets its memory.
//!
//! The broker binaries run on mimalloc (declared in each `main`): every input
//! allocates a few short-lived buffers on several threads, and the system
//! allocator spent a fifth of the broker's CPU on them. mimalloc's arenas
//! on transparent huge pages, though, made each idle connection cost half as
//! much again (25.6 instead of 17.1 KiB, measured with 19,000 connections)
//! and the CPU spent zeroing fresh 2 MiB pages showed up in profiles; so the
//! process asks for ordinary pages. BENCHMARKS.md has the figures.

/// Turns transparent huge pages off for this process. Call it first thing
/// in `main`, before the runtime starts. On systems without the switch it
/// does nothing.
pub fn use_small_pages() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = rustix::thread::disable_transparent_huge_pages(true) {
        tracing::debug!(error = %e, "transparent huge pages stay as the system sets them");
    }
}
