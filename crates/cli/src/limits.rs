//! The open-file limit of the commands that run for long: a server holds
//! a connection per device (and its relay up to two more: the TLS stream
//! and a UDP socket of the device's own), a daemon a UDP socket per peer
//! endpoint. Under the usual soft limit of 1024 a relay would run out of
//! descriptors near 500 devices (its `accept` failing with "too many
//! open files"), however high the hard limit an administrator set; so
//! these commands raise the soft limit to the hard one at start, as a
//! service manager's `LimitNOFILE` would.

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// What the kernel takes for the limit when the hard limit is unlimited
/// (`fs.nr_open`'s default; a larger value is refused).
const NR_OPEN: u64 = 1 << 20;

/// The soft limit to set, given the current limits: the hard one (or
/// [`NR_OPEN`] when that is unlimited); `None` when the soft limit is
/// already there or above.
fn wanted(limits: &Rlimit) -> Option<u64> {
    let ceiling = limits.maximum.unwrap_or(NR_OPEN);
    match limits.current {
        Some(soft) if soft < ceiling => Some(ceiling),
        _ => None,
    }
}

/// Raises this process's soft limit on open files as far as its hard
/// limit allows, and logs what it is. A refusal is logged and leaves the
/// limit as it was: the command still runs, with fewer descriptors.
pub fn raise_open_files() {
    let limits = getrlimit(Resource::Nofile);
    let Some(target) = wanted(&limits) else {
        tracing::debug!(soft = ?limits.current, hard = ?limits.maximum, "open-file limit");
        return;
    };
    let raised = Rlimit {
        current: Some(target),
        maximum: limits.maximum,
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(
            from = ?limits.current,
            to = target,
            "raised the open-file limit to the hard limit"
        ),
        Err(e) => tracing::warn!(
            soft = ?limits.current,
            hard = ?limits.maximum,
            error = %e,
            "cannot raise the open-file limit; with many devices (server, relay) or peers (daemon) this process may run out of descriptors: set LimitNOFILE= in its unit or `ulimit -n` before starting it"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(current: Option<u64>, maximum: Option<u64>) -> Rlimit {
        Rlimit { current, maximum }
    }

    #[test]
    fn the_soft_limit_goes_up_to_the_hard_one() {
        assert_eq!(wanted(&limits(Some(1024), Some(524_288))), Some(524_288));
        assert_eq!(wanted(&limits(Some(1024), None)), Some(NR_OPEN));
    }

    #[test]
    fn a_soft_limit_already_there_is_left_alone() {
        assert_eq!(wanted(&limits(Some(20_000), Some(20_000))), None);
        assert_eq!(wanted(&limits(None, None)), None);
        assert_eq!(wanted(&limits(Some(NR_OPEN * 2), None)), None);
    }

    #[test]
    fn raising_brings_a_lowered_soft_limit_back_to_the_hard_one() {
        let before = getrlimit(Resource::Nofile);
        let soft = before.current.expect("a finite soft limit on open files");
        // One below where it was: the other tests in this process keep
        // their room.
        let lowered = Rlimit {
            current: Some(soft.saturating_sub(1)),
            maximum: before.maximum,
        };
        setrlimit(Resource::Nofile, lowered).expect("lower the soft limit");
        raise_open_files();
        let after = getrlimit(Resource::Nofile);
        assert_eq!(after.current, Some(before.maximum.unwrap_or(NR_OPEN)));
        assert_eq!(after.maximum, before.maximum);
    }
}
