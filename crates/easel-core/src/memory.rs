//! How much freed memory the process keeps for reuse: glibc's malloc, told once at start.
//!
//! glibc serves a large block with its own `mmap` and gives it back with `munmap` when freed,
//! and hands free space at the top of a heap back to the kernel; the next block of that size is
//! then new memory that the kernel faults in and zeroes page by page on first touch. Easel's
//! large blocks come in two kinds, each with its own level ([`Keep`]):
//!
//! - **[`Keep::Bodies`]**, every `easel serve` process: request and answer bodies. A relayed 1 MiB
//!   answer is read into one buffer per request; with glibc's defaults each one was faulted in
//!   afresh (37–80 page faults per request), and the faults and the unmapping were a sixth of the
//!   server's CPU (perf, 1 MiB relay at concurrency 16, 2-core Zen 5). Here blocks under 32 MiB
//!   come from the heap and at most 128 MiB of free space at the top of each of malloc's heaps
//!   (one per arena; glibc makes up to 8 per core as threads need them) is kept: no faults in
//!   steady state, CPU per request 0.90–0.92 → 0.75–0.77 ms at concurrency 1 and 0.63 → 0.45–0.51
//!   ms at 16 (`bench/relay/RESULTS.md`). Larger blocks (big uploads) are still mapped and given
//!   back whole.
//! - **[`Keep::Tensors`]**, processes that run local models (the diffusion worker at spawn, the
//!   diffusion benchmark): every CPU kernel writes a fresh output, 64–256 MiB each at 512², hundreds
//!   per image; a quarter of an sd-turbo 512² image's CPU went to `clear_page` and the page-fault
//!   path. Heap `mmap` off and a 2 GiB trim threshold: 290 k page faults in an sd-turbo 512² run
//!   instead of 1.26 M (`bench/diffusion/kernels.md`; its time gain alone was within the
//!   machine's drift, together with the diffusion crate's fused adds 20–25 %). The cost: the heap
//!   keeps up to 2 GiB of free space after a job, which the next job needs again anyway.
//!
//! On 32-bit glibc the largest mmap threshold is 16 MiB; there the call is refused and logged.
//!
//! A level only ever rises (the tensors' level is never undone by a later call for bodies).
//! Other C libraries (musl) and other systems keep their own behaviour: the calls do nothing
//! there.
//!
//! [`prefer_huge_pages`] is the other half of a large buffer's cost: a block that is new memory
//! is faulted in and cleared 4 KiB at a time as it is first written; a model's weights (5–14 GB
//! for the SD family in f32) are read into such blocks once, at load, where transparent huge
//! pages take the faults from about 3.5 million to under a million (SDXL).
//!
//! `mallopt` and `madvise` are this crate's two `unsafe` calls.
#![allow(unsafe_code)]

use std::sync::Mutex;

/// How much freed memory to keep; see the module docs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Keep {
    /// Bodies under 32 MiB from the heap, up to 128 MiB of free heap kept.
    Bodies,
    /// Every block from the heap, up to 2 GiB of free heap kept.
    Tensors,
}

/// Raises malloc's retention to `level` (nothing when it is already there or higher).
pub fn keep_freed_memory(level: Keep) {
    static CURRENT: Mutex<Option<Keep>> = Mutex::new(None);
    let mut current = CURRENT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if current.is_some_and(|c| c >= level) {
        return;
    }
    *current = Some(level);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const MIB: i32 = 1 << 20;
        let settings: &[(i32, i32)] = match level {
            Keep::Bodies => &[(libc::M_MMAP_THRESHOLD, 32 * MIB), (libc::M_TRIM_THRESHOLD, 128 * MIB)],
            Keep::Tensors => &[(libc::M_MMAP_MAX, 0), (libc::M_TRIM_THRESHOLD, i32::MAX)],
        };
        for &(parameter, value) in settings {
            // SAFETY: `mallopt` only changes malloc's parameters; it is thread-safe in glibc and
            // takes plain integers.
            if unsafe { libc::mallopt(parameter, value) } != 1 {
                tracing::warn!(
                    parameter,
                    value,
                    "malloc kept a default (mallopt refused): large blocks are faulted in afresh"
                );
            }
        }
    }
}

/// Asks the kernel to back `buf` with transparent huge pages (2 MiB) where it can, before `buf`
/// is first written: its 2 MiB-aligned interior is `madvise`d `MADV_HUGEPAGE` (Linux with THP in
/// `madvise` or `always` mode; nothing elsewhere, and nothing for buffers under 2 MiB).
pub fn prefer_huge_pages<T>(buf: &mut [T]) {
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = buf.as_mut_ptr() as usize;
        let end = start + std::mem::size_of_val(buf);
        let (from, to) = (start.next_multiple_of(HUGE), end / HUGE * HUGE);
        if to > from {
            // SAFETY: the range lies inside `buf`, which this call borrows mutably; MADV_HUGEPAGE
            // changes how the kernel backs the pages, never their contents.
            unsafe { libc::madvise(from as *mut libc::c_void, to - from, libc::MADV_HUGEPAGE) };
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hint changes no contents, whatever the buffer's size and alignment.
    #[test]
    fn huge_page_hints_leave_buffers_as_they_are() {
        let mut big: Vec<u32> = (0..(5 << 20) / 4).collect();
        prefer_huge_pages(&mut big[1..]);
        prefer_huge_pages(&mut big);
        assert!(big.iter().enumerate().all(|(i, &v)| v == i as u32));
        let mut small = [1u8, 2, 3];
        prefer_huge_pages(&mut small);
        prefer_huge_pages::<f32>(&mut []);
        assert_eq!(small, [1, 2, 3]);
    }
}
