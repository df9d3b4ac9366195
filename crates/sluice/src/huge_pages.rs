//! Opting the process out of transparent huge pages.
//!
//! mimalloc asks the kernel for huge pages (`madvise(MADV_HUGEPAGE)`), so where the kernel's
//! setting is `madvise` or `always` the first touch of fresh heap zeroes a whole 2 MiB page at
//! once. For a data plane whose stores grow with every flow that cost is large: measured on the
//! DPS benchmark (2 cores, memory store, 32 connections) 8–10 % of all CPU cycles went to the
//! kernel zeroing huge pages, and the stall of each such fault on a worker thread was the p99
//! (5.5 ms with huge pages, 1.1–1.3 ms without). Databases (Redis, MongoDB) advise the same.

/// Turns transparent huge pages off for this process (and its children) from now on. Linux
/// only; elsewhere, and on kernels without `PR_SET_THP_DISABLE`, nothing changes.
pub fn opt_out() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl(PR_SET_THP_DISABLE) takes plain integers and touches no memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_reports_huge_pages_off_afterwards() {
        opt_out().expect("prctl");
        // SAFETY: as above; PR_GET_THP_DISABLE only returns the flag.
        let flag = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(flag, 1);
    }
}
