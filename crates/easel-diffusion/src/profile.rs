//! Per-operation timers for the CPU benchmark (`easel-diffusion-bench --profile`).
//!
//! Every speed change to the model code has to be justified by the share of time it attacks, so
//! the kernels report what they do: the convolutions' GEMMs and im2col copies by layer shape,
//! the linear layers, group norms, attention, and the copies between them. Off by default: a
//! disabled timer costs one relaxed atomic load. When on, each timed call adds its wall time,
//! call count and floating-point operations to a table keyed by (operation, shape); rows are
//! exclusive (a GEMM inside a convolution is not also counted as the convolution), so their
//! shares add up, and [`report`] prints what the timers did not cover as "untimed".
//! [`cpu_seconds`] is the process's user + system time, the counters `getrusage` reads.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

static ON: AtomicBool = AtomicBool::new(false);
static TABLE: Mutex<BTreeMap<(&'static str, String), Stat>> = Mutex::new(BTreeMap::new());

/// Totals for one (operation, shape).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stat {
    pub calls: u64,
    pub seconds: f64,
    pub flops: f64,
}

/// Turns the timers on or off (the benchmark turns them on; nothing else does).
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

#[inline]
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// A running timer; recorded when dropped.
pub struct Timer {
    op: &'static str,
    shape: String,
    flops: f64,
    start: Instant,
}

impl Drop for Timer {
    fn drop(&mut self) {
        let seconds = self.start.elapsed().as_secs_f64();
        let mut table = TABLE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let s = table.entry((self.op, std::mem::take(&mut self.shape))).or_default();
        s.calls += 1;
        s.seconds += seconds;
        s.flops += self.flops;
    }
}

/// Starts timing `op`; `what` gives the shape label and the floating-point operations, and runs
/// only when profiling is on. Keep the returned value alive for the span to time.
#[inline]
pub fn start(op: &'static str, what: impl FnOnce() -> (String, f64)) -> Option<Timer> {
    if !enabled() {
        return None;
    }
    let (shape, flops) = what();
    Some(Timer { op, shape, flops, start: Instant::now() })
}

/// Times `f` as `op` (see [`start`]).
#[inline]
pub fn time<R>(op: &'static str, what: impl FnOnce() -> (String, f64), f: impl FnOnce() -> R) -> R {
    let _t = start(op, what);
    f()
}

/// Takes the table, leaving it empty.
pub fn take() -> Vec<(&'static str, String, Stat)> {
    let mut table = TABLE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    std::mem::take(&mut *table).into_iter().map(|((op, shape), s)| (op, shape, s)).collect()
}

/// The process's CPU time so far (user + system, all threads, in seconds), from
/// `/proc/self/stat`; NaN where that file does not exist.
pub fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return f64::NAN };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15, in
    // clock ticks of 1/100 s (USER_HZ, fixed at 100 on Linux).
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return f64::NAN };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::NAN);
    (tick(11) + tick(12)) / 100.0
}

/// The table for a run of `wall` seconds, largest share first: one line per (operation, shape)
/// with calls, seconds, share of `wall` and GFLOP/s, then the totals per operation and the
/// untimed rest. Rows under `min_share` are folded into one line per operation.
pub fn report(rows: &[(&'static str, String, Stat)], wall: f64, min_share: f64) -> String {
    use std::fmt::Write;
    let mut rows: Vec<_> = rows.to_vec();
    rows.sort_by(|a, b| b.2.seconds.total_cmp(&a.2.seconds));
    let gflops = |s: &Stat| if s.flops > 0.0 { format!("{:.1}", s.flops / s.seconds / 1e9) } else { "-".into() };
    let mut out = String::new();
    let _ =
        writeln!(out, "{:<22} {:<34} {:>7} {:>9} {:>7} {:>8}", "op", "shape", "calls", "seconds", "share", "GFLOP/s");
    let mut small: BTreeMap<&str, Stat> = BTreeMap::new();
    let mut per_op: BTreeMap<&str, Stat> = BTreeMap::new();
    for (op, shape, s) in &rows {
        let t = per_op.entry(op).or_default();
        t.calls += s.calls;
        t.seconds += s.seconds;
        t.flops += s.flops;
        if s.seconds / wall < min_share {
            let t = small.entry(op).or_default();
            t.calls += s.calls;
            t.seconds += s.seconds;
            t.flops += s.flops;
            continue;
        }
        let share = 100.0 * s.seconds / wall;
        let _ = writeln!(out, "{op:<22} {shape:<34} {:>7} {:>9.3} {share:>6.1}% {:>8}", s.calls, s.seconds, gflops(s));
    }
    for (op, s) in &small {
        let share = 100.0 * s.seconds / wall;
        let _ = writeln!(
            out,
            "{op:<22} {:<34} {:>7} {:>9.3} {share:>6.1}% {:>8}",
            "(smaller)",
            s.calls,
            s.seconds,
            gflops(s)
        );
    }
    let _ = writeln!(out, "-- per operation --");
    let mut ops: Vec<_> = per_op.into_iter().collect();
    ops.sort_by(|a, b| b.1.seconds.total_cmp(&a.1.seconds));
    let timed: f64 = ops.iter().map(|(_, s)| s.seconds).sum();
    for (op, s) in &ops {
        let share = 100.0 * s.seconds / wall;
        let _ = writeln!(out, "{op:<22} {:<34} {:>7} {:>9.3} {share:>6.1}% {:>8}", "", s.calls, s.seconds, gflops(s));
    }
    let rest = wall - timed;
    let _ = writeln!(out, "{:<22} {:<34} {:>7} {:>9.3} {:>6.1}%", "untimed", "", "", rest, 100.0 * rest / wall);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_record_only_when_enabled() {
        // One test owns the global switch (tests run in parallel threads).
        let _ = take();
        time("probe-off", || (String::new(), 1.0), || ());
        assert!(take().iter().all(|r| r.0 != "probe-off"));
        enable(true);
        for _ in 0..3 {
            time("probe", || ("4x4".into(), 128.0), || std::thread::sleep(std::time::Duration::from_millis(2)));
        }
        enable(false);
        let rows: Vec<_> = take().into_iter().filter(|r| r.0 == "probe").collect();
        assert_eq!(rows.len(), 1);
        assert_eq!((rows[0].1.as_str(), rows[0].2.calls, rows[0].2.flops), ("4x4", 3, 384.0));
        assert!(rows[0].2.seconds >= 0.006);
        let text = report(&rows, 1.0, 0.0);
        assert!(text.contains("probe") && text.contains("untimed"), "{text}");
        assert!(cpu_seconds() >= 0.0);
    }
}
