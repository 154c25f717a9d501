//! The file-descriptor budget: every connection attempt holds one socket, so the
//! number of attempts in flight must stay below `RLIMIT_NOFILE`.
//!
//! The soft limit is raised to the hard one first (shells often start programs with a
//! soft limit of 1024 while the hard limit is far higher), then a margin is kept for the
//! descriptors the process needs anyway: standard streams, the poll, its waker, the
//! signal pipe, the resolver threads' sockets and files such as `/etc/services`.

/// Descriptors kept back for everything that is not a connection attempt.
pub const RESERVED_DESCRIPTORS: u64 = 64;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the soft limit now in
/// force, or `None` when it cannot be read (then the caller's own cap stands).
pub fn raise_nofile_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the struct we pass; nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Some(raised.rlim_cur);
        }
        // An unlimited hard limit may exceed what the kernel accepts (nr_open): keep the
        // soft limit that works.
        log::debug!(
            "could not raise the descriptor limit to {}: {}",
            limit.rlim_max,
            std::io::Error::last_os_error()
        );
    }
    Some(limit.rlim_cur)
}

/// How many attempts may be in flight: what the user asked for, but never more than
/// the soft limit minus the reserve (and at least one, or nothing could run).
pub fn attempt_cap(requested: usize, soft_limit: Option<u64>) -> usize {
    let Some(soft) = soft_limit else {
        return requested.max(1);
    };
    let budget = if soft > 2 * RESERVED_DESCRIPTORS {
        soft - RESERVED_DESCRIPTORS
    } else {
        // A tiny limit: leave half for the rest of the process.
        soft / 2
    };
    let budget = usize::try_from(budget).unwrap_or(usize::MAX);
    requested.min(budget).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_below_the_descriptor_limit() {
        assert_eq!(attempt_cap(512, Some(1024)), 512);
        assert_eq!(
            attempt_cap(5000, Some(1024)),
            1024 - RESERVED_DESCRIPTORS as usize
        );
        assert_eq!(attempt_cap(5000, Some(100)), 50);
        assert_eq!(attempt_cap(5000, Some(1)), 1);
        assert_eq!(attempt_cap(7, None), 7);
        assert_eq!(attempt_cap(512, Some(u64::MAX)), 512);
    }

    #[test]
    fn raising_the_limit_leaves_a_soft_limit_equal_to_the_hard_one() {
        let soft = raise_nofile_limit().expect("getrlimit works on Linux");
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        assert_eq!(limit.rlim_cur, soft);
        assert!(soft == limit.rlim_max || limit.rlim_max == libc::RLIM_INFINITY);
    }
}
