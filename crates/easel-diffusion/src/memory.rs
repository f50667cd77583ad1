//! Keeping freed memory in the process for the next tensor of the same size.
//!
//! Every candle op and every CPU kernel of [`crate::ops`] writes a fresh output: at 512² the
//! VAE's are 64–256 MiB each, hundreds per image. glibc's malloc serves anything over 32 MiB
//! with its own `mmap` and returns it with `munmap` when freed, so each output is new memory
//! that the kernel faults in and zeroes page by page on first touch: a quarter of the CPU time
//! of an sd-turbo 512² image went to `clear_page` and the page-fault path (perf, 2-core Zen 5).
//! With `mmap` off for the heap (`M_MMAP_MAX = 0`) and a trim threshold of 2 GiB (free space at
//! the heap's top is handed back only past that), freed outputs
//! stay in malloc's free lists and the next one reuses them without a fault: 290 k page faults
//! in an sd-turbo 512² run instead of 1.26 M (`perf stat`, `bench/diffusion/kernels.md`; its
//! time gain alone was within this machine's drift, together with `ops::Extra` 20–25 %).
//!
//! The cost is memory the process keeps after a job: the heap holds up to 2 GiB of free space
//! above what is in use instead of handing it back, which a process that runs one diffusion
//! after another needs again anyway. Only processes that run local models call this (the worker
//! at spawn, the benchmark); a gateway without local models keeps glibc's defaults. Other C
//! libraries (musl) and other systems keep theirs: the call does nothing there. The `mallopt`
//! call is one of the crate's few `unsafe` blocks (with [`crate::gemm`]'s kernel call and
//! [`crate::exp::simd`]'s target-feature calls).
#![allow(unsafe_code)]

use std::sync::Once;

/// Switches glibc's malloc to keep freed memory for reuse (see the module docs). Idempotent.
pub fn keep_freed_memory() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: `mallopt` only changes malloc's parameters; it is thread-safe in glibc and
        // takes plain integers.
        unsafe {
            let mmap_off = libc::mallopt(libc::M_MMAP_MAX, 0);
            let trim = libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            if mmap_off != 1 || trim != 1 {
                tracing::warn!("malloc kept its defaults (mallopt refused): large outputs will be faulted in afresh");
            }
        }
    });
}
