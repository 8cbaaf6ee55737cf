//! One error type for the whole helper. Every error carries a kind (which
//! decides the exit code and the `error.kind` in status.json) and a single line
//! of text that names the problem: the field, the path, the host.

use std::fmt;

/// What went wrong, coarse enough to choose an exit code and to let scripts
/// react to `error.kind` in status.json.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Bad command line or job file (exit 2).
    Usage,
    /// Another run of the same job holds the lock (exit 75).
    Locked,
    /// A tool we orchestrate failed or is missing (exit 1).
    Tool,
    /// The server could not be reached or refused us (exit 1).
    Remote,
    /// Local file system trouble (exit 1).
    Io,
    /// The password does not unlock the gocryptfs config (exit 1).
    Password,
    /// SIGINT or SIGTERM arrived (exit 1).
    Interrupted,
    /// A safety check refused the run, e.g. an empty source (exit 1).
    Refused,
    /// Data read back from the remote or the state dir is not what we wrote.
    Corrupt,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Usage => "usage",
            Kind::Locked => "locked",
            Kind::Tool => "tool",
            Kind::Remote => "remote",
            Kind::Io => "io",
            Kind::Password => "password",
            Kind::Interrupted => "interrupted",
            Kind::Refused => "refused",
            Kind::Corrupt => "corrupt",
        }
    }

    pub fn exit_code(self) -> i32 {
        match self {
            Kind::Usage => 2,
            Kind::Locked => 75,
            _ => 1,
        }
    }
}

/// The longest error message kept (a failing rsync may name many files).
const MAX_MESSAGE: usize = 4096;

#[derive(Debug, Clone)]
pub struct Error {
    pub kind: Kind,
    pub message: String,
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn new(kind: Kind, message: impl Into<String>) -> Self {
        // Keep every error on one line: tool stderr tails may carry newlines.
        let mut message = message.into().replace('\n', " | ");
        // And short: a message can quote what a target sent, and ends up in
        // status.json, the journal and a terminal.
        if message.len() > MAX_MESSAGE {
            let mut cut = MAX_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            let more = message.len() - cut;
            message.truncate(cut);
            message.push_str(&format!("… ({more} more bytes)"));
        }
        Error { kind, message }
    }

    pub fn usage(message: impl Into<String>) -> Self {
        Error::new(Kind::Usage, message)
    }

    pub fn io(what: impl fmt::Display, err: std::io::Error) -> Self {
        Error::new(Kind::Io, format!("{what}: {err}"))
    }

    pub fn interrupted() -> Self {
        Error::new(Kind::Interrupted, "interrupted by a signal")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Adds context to io errors in one short call: `.ctx(|| format!(...))`.
pub trait IoContext<T> {
    fn ctx<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn ctx<D: fmt::Display>(self, what: impl FnOnce() -> D) -> Result<T> {
        self.map_err(|e| Error::io(what(), e))
    }
}
