//! Printing that a closed pipe cannot stop. While twill-lab builds, soaks or measures labs it
//! ignores SIGPIPE, so a reader that goes away (`twill-lab up … | head -1`) does not kill it
//! between two steps or in its teardown; a write then fails with EPIPE, which
//! [`outln!`](crate::outln) and [`errln!`](crate::errln) drop where `println!` would panic.
//! The run goes on, showing no more, and ends as it would have. The other commands keep
//! SIGPIPE's default and die quietly, as command-line tools do.

use std::io::Write;

/// Writes `args` to stdout; a failed write (the reader gone) is dropped.
pub fn stdout(args: std::fmt::Arguments<'_>) {
    let _ = std::io::stdout().lock().write_fmt(args);
}

/// Writes `args` to stderr; a failed write is dropped.
pub fn stderr(args: std::fmt::Arguments<'_>) {
    let _ = std::io::stderr().lock().write_fmt(args);
}

/// Ignores SIGPIPE from now on: writes to a closed pipe fail instead (Rust's own default,
/// which twill-lab's `main` replaces with the signal's default for the other commands).
pub fn survive_closed_pipes() {
    // SAFETY: signal(2) with SIG_IGN installs no handler; called before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

/// `print!` whose failure is dropped (see the module).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::stdout(format_args!($($arg)*))
    };
}

/// `println!` whose failure is dropped (see the module).
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `eprintln!` whose failure is dropped (see the module).
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::output::stderr(format_args!("{}\n", format_args!($($arg)*)))
    };
}
