//! CPU time of a process, read from `/proc`, so a benchmark can say what one signal costs the
//! process that relays it.
//!
//! The time is the sum over the process's live threads of `/proc/<pid>/task/<tid>/schedstat`'s
//! first field (nanoseconds on a CPU): nanosecond resolution, unlike `utime + stime` in
//! `/proc/<pid>/stat` (clock ticks, usually 10 ms). A thread that exits between two readings
//! takes its time with it; the processes measured (the steer, nginx with one worker, a node,
//! this process) keep their threads for the whole run. On a system without `schedstat` the
//! reading falls back to `utime + stime` at 100 ticks per second. This machine's `perf` has
//! only software events (`task-clock` is this same figure), so no cycle counts are read.

use std::path::Path;

/// Nanoseconds a process has spent on a CPU, or `None` if `/proc` does not know it.
pub fn cpu_ns(pid: u32) -> Option<u64> {
    let dir = format!("/proc/{pid}");
    schedstat_ns(Path::new(&dir)).or_else(|| stat_ns(Path::new(&dir)))
}

/// This process's CPU time.
pub fn own_cpu_ns() -> Option<u64> {
    cpu_ns(std::process::id())
}

fn schedstat_ns(dir: &Path) -> Option<u64> {
    let mut total = 0u64;
    let mut any = false;
    for t in std::fs::read_dir(dir.join("task")).ok()? {
        let Ok(t) = t else { continue };
        let Ok(text) = std::fs::read_to_string(t.path().join("schedstat")) else {
            continue;
        };
        if let Some(ns) = parse_schedstat(&text) {
            total = total.saturating_add(ns);
            any = true;
        }
    }
    any.then_some(total)
}

fn stat_ns(dir: &Path) -> Option<u64> {
    parse_stat_ticks(&std::fs::read_to_string(dir.join("stat")).ok()?).map(|t| t * 10_000_000)
}

/// The first field of a `schedstat` line: time on a CPU (ns).
fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_ascii_whitespace().next()?.parse().ok()
}

/// `utime + stime` (clock ticks) of a `/proc/<pid>/stat` line. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted from its last `)`.
fn parse_stat_ticks(text: &str) -> Option<u64> {
    let rest = &text[text.rfind(')')? + 1..];
    let mut f = rest.split_ascii_whitespace();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = f.nth(11)?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some(utime + stime)
}

/// CPU time a process spent between two readings, if both were taken.
pub fn spent(before: Option<u64>, after: Option<u64>) -> Option<u64> {
    Some(after?.saturating_sub(before?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_spaces_and_parentheses_in_the_name_gives_utime_plus_stime() {
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 \
                    250 37 0 0 20 0 4 0 1000 12345 678 18446744073709551615";
        assert_eq!(parse_stat_ticks(line), Some(287));
        assert_eq!(parse_stat_ticks("garbage"), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None, "too few fields");
    }

    #[test]
    fn a_schedstat_line_gives_its_first_field() {
        assert_eq!(parse_schedstat("123456789 2000 17\n"), Some(123_456_789));
        assert_eq!(parse_schedstat(""), None);
        assert_eq!(parse_schedstat("x 1 2"), None);
    }

    #[test]
    fn this_process_has_spent_some_cpu_and_it_only_grows() {
        let a = own_cpu_ns().expect("linux /proc");
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        let b = own_cpu_ns().expect("linux /proc");
        assert!(b >= a);
        assert_eq!(spent(Some(a), Some(b)), Some(b - a));
        assert_eq!(spent(None, Some(b)), None);
    }
}
