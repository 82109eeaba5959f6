//! The allocator settings of the per-host agent: the second `unsafe` module in assim (the
//! first is `assim-capture`'s AF_PACKET calls).
//!
//! glibc's malloc gives every thread that allocates its own arena, and after a large buffer
//! is freed it raises its mmap threshold, so the next large buffers (a collector's file, a
//! result's JSON) come from an arena and stay resident after they are freed. For a daemon that
//! runs on every host and is idle almost all the time that is the wrong trade: measured with
//! `scripts/footprint`, these two settings take about 0.9 MB off the idle RSS.
//!
//! - one arena: the nanoprobe's runtime has one thread, and collectors and checks run briefly
//!   on blocking threads, so there is no lock contention worth an arena each;
//! - a fixed mmap threshold of 64 KiB: larger buffers are mapped and unmapped, and go back to
//!   the kernel as soon as they are freed;
//! - every 10 s (the metrics tick) [`release_free_memory`] hands whole free pages inside the
//!   heap back to the kernel (`malloc_trim`), so one long-lived allocation above a freed
//!   collector buffer does not keep that buffer's pages resident.
#![allow(unsafe_code)]

/// Applies the settings. Call once, first thing, before any thread is started. On a C library
/// other than glibc it does nothing.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` takes two integers and touches only malloc's own parameters; it is
        // called before the runtime starts any thread, as glibc's manual asks. A return of 0
        // (rejected) only leaves glibc's default in place, which is harmless.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
            libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
        }
    }
}

/// Gives whole free pages of the heap back to the kernel. Cheap on the agent's small heap
/// (it walks the free lists once); the driver calls it on its 10-second metrics tick.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` takes an integer (the padding to keep) and only returns free
        // memory that malloc owns to the kernel; no pointer of ours is involved.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}
