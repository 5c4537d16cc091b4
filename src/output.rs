//! What a command prints as its result. `println!` panics when stdout is gone (`kyc dlq list
//! | head`); here a closed stdout ends the command quietly, as other tools do on SIGPIPE.

use std::fmt;
use std::io::{ErrorKind, Write};

/// The exit status of a command whose reader went away (128 + SIGPIPE).
const CLOSED: i32 = 141;

pub fn line(args: fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"))
    {
        if error.kind() == ErrorKind::BrokenPipe {
            std::process::exit(CLOSED);
        }
        eprintln!("kyc: cannot write the output: {error}");
        std::process::exit(1);
    }
}

/// `println!` for a command's result: see [`line`].
macro_rules! out {
    () => {
        $crate::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::output::line(format_args!($($arg)*))
    };
}
