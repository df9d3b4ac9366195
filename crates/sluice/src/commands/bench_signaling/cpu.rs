//! CPU time this process used during a measurement window: with server and load generator
//! sharing the cores, µs of CPU per pair compares builds across machines and noisy runs better
//! than pairs per second alone.

use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`, 100 on Linux's mainstream ABIs).
const TICKS_PER_SEC: u64 = 100;

/// User plus system CPU time of this process so far; `None` where `/proc` cannot tell.
pub fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_stat(&stat)
}

/// utime + stime from the text of `/proc/<pid>/stat`.
fn parse_stat(stat: &str) -> Option<Duration> {
    // The command name (field 2) may hold spaces and parentheses: fields are counted after the
    // last ')'. From there, field 3 (state) is index 0, utime (14) index 11, stime (15) index 12.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime.checked_add(stime)?;
    Some(Duration::from_millis(
        ticks.checked_mul(1000 / TICKS_PER_SEC)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_user_and_system_time_after_an_odd_command_name() {
        let stat = "4242 (sl (ui) ce) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 4 0 \
                    123 456 789";
        assert_eq!(parse_stat(stat), Some(Duration::from_millis(3250)));
    }

    #[test]
    fn short_or_garbled_text_is_none() {
        assert_eq!(parse_stat("4242 (sluice) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
        assert_eq!(parse_stat("1 (x) S 1 1 1 0 -1 0 0 0 0 0 abc 75 0"), None);
    }

    #[test]
    fn cpu_time_grows_while_this_process_computes() {
        let before = process_cpu().expect("/proc/self/stat is readable");
        let began = std::time::Instant::now();
        let mut spun = 0u64;
        // The clock ticks every 10 ms: compute until it moves (bounded, in case it never does).
        while process_cpu().is_some_and(|now| now <= before)
            && began.elapsed() < Duration::from_secs(5)
        {
            spun = (0..100_000u64).fold(spun, |a, b| a.wrapping_add(b * b));
        }
        assert!(process_cpu().is_some_and(|now| now > before), "{spun}");
    }
}
