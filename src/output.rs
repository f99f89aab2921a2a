//! Writing to stdout and stderr without ever stopping work.
//!
//! `println!` and `eprintln!` panic when the stream is gone (`ddexp run e.ron 2>&1 | head -1`
//! closes the pipe after one line; Rust ignores SIGPIPE, so the write fails with EPIPE). A
//! training run must not die, or be marked failed, because nobody reads its messages any
//! more: its logs, checkpoints and run.json are files. So every message goes through
//! [`outln!`](crate::outln), [`out!`](crate::out), [`eoutln!`](crate::eoutln) and
//! [`eout!`](crate::eout): the first failed write marks the stream gone and later messages
//! to it are dropped; the work goes on.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_GONE: AtomicBool = AtomicBool::new(false);
static STDERR_GONE: AtomicBool = AtomicBool::new(false);

/// Writes to stdout; after a failed write, writes nothing more to it.
pub fn stdout(args: fmt::Arguments) {
    if STDOUT_GONE.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if out.write_fmt(args).and_then(|()| out.flush()).is_err() {
        STDOUT_GONE.store(true, Ordering::Relaxed);
    }
}

/// Writes to stderr; after a failed write, writes nothing more to it.
pub fn stderr(args: fmt::Arguments) {
    if STDERR_GONE.load(Ordering::Relaxed) {
        return;
    }
    if std::io::stderr().lock().write_fmt(args).is_err() {
        STDERR_GONE.store(true, Ordering::Relaxed);
    }
}

/// Whether stdout has failed a write (a reader that went away).
pub fn stdout_gone() -> bool {
    STDOUT_GONE.load(Ordering::Relaxed)
}

/// `print!` that never panics.
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::stdout(format_args!($($arg)*)) };
}

/// `println!` that never panics.
#[macro_export]
macro_rules! outln {
    () => { $crate::output::stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `eprint!` that never panics.
#[macro_export]
macro_rules! eout {
    ($($arg:tt)*) => { $crate::output::stderr(format_args!($($arg)*)) };
}

/// `eprintln!` that never panics.
#[macro_export]
macro_rules! eoutln {
    () => { $crate::output::stderr(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::stderr(format_args!("{}\n", format_args!($($arg)*))) };
}
