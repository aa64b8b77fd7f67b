//! Tests that need a network namespace of their own (root, as CI has):
//! one is made, a thread enters it and runs the test body there, and the
//! namespace is deleted whatever the body did.

use std::process::Command;

/// Runs a command; whether it succeeded.
pub fn run(args: &[&str]) -> bool {
    args.split_first().is_some_and(|(program, rest)| {
        Command::new(program)
            .args(rest)
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Runs `body` on a thread inside a fresh network namespace, passing it the
/// namespace's name (for `ip -n` and `ip netns exec`). `None`, with the
/// reason printed, when the namespace cannot be made (not root, no `ip`).
/// A panic in `body` goes on after the namespace is deleted.
pub fn in_own_namespace<R: Send + 'static>(
    label: &str,
    body: impl FnOnce(&str) -> R + Send + 'static,
) -> Option<R> {
    let name = format!("ztmesh-{label}-{}", std::process::id());
    if !run(&["ip", "netns", "add", &name]) {
        eprintln!("skipped: cannot create a network namespace (not root, or no `ip`)");
        return None;
    }
    let result = std::thread::spawn({
        let name = name.clone();
        move || {
            let ns = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap();
            body(&name)
        }
    })
    .join();
    run(&["ip", "netns", "del", &name]);
    Some(result.unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
}
