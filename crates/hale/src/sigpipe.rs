//! A closed pipe on stdout (`hale outage report | head`) ends an output
//! command quietly, as it does `ls` or `cat`.
//!
//! Rust ignores SIGPIPE, so a write to a closed pipe returns `EPIPE` and
//! `println!` panics on it. For commands that print and exit, SIGPIPE goes
//! back to its default action: the process ends at that write, with no panic
//! and no message (the shell reports nothing for a SIGPIPE in a pipeline).
//!
//! Never for `serve`, and not for the commands that supervise `hale serve`
//! children (`up`, `chaos`, `bench`): a node must not die because a client
//! hung up, and a supervisor killed by a signal leaves its children running.
//! Sockets are not affected either way (Rust sends with `MSG_NOSIGNAL`), so
//! this only changes what a closed stdout or stderr pipe does.

/// Restore SIGPIPE's default action for this process (unix; elsewhere a no-op).
pub fn exit_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: `signal` with `SIG_DFL` only sets this process's disposition for
    // SIGPIPE; it runs at start, before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
