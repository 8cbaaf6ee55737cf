//! How much of what a target sends is read, at most. Every byte from a
//! target is untrusted: a record, a checksum list or a script's output that
//! never ends (a sparse 1 GiB file of zeros is one line) must end in a clear
//! error, not in gigabytes of memory or a status.json of the same size.
//!
//! The bounds follow from what a job can legitimately produce:
//! * a line names one path: at most PATH_MAX (4096) bytes, escaped (x2),
//!   plus the type, mode, size or sum in front;
//! * a tree holds at most `MAX_TREE_ENTRIES` entries, the largest tree this
//!   tool is made for (50 times the 200,000-file benchmark set);
//! * text held whole (a listing of names, a script's short answer) and
//!   gocryptfs' own small files have fixed ceilings far above their size.

use std::io::{BufRead, Read};

use crate::error::{Error, Kind, Result};

/// One line of a record, a checksum list, a listing or rsync's output.
pub const MAX_LINE: usize = 64 * 1024;
/// Entries in one record, checksum list or listing.
pub const MAX_TREE_ENTRIES: usize = 10_000_000;
/// A record of the largest tree: at most this many bytes are read of one.
pub const MAX_RECORD_BYTES: u64 = MAX_TREE_ENTRIES as u64 * 160;
/// Output of a remote command that is read whole into memory.
pub const MAX_TEXT: u64 = 64 * 1024 * 1024;
/// gocryptfs.conf (about 1 KiB), gocryptfs.diriv (16 bytes), a long
/// name's .name file.
pub const MAX_SMALL_FILE: u64 = 64 * 1024;

/// Lines of at most `MAX_LINE` bytes (without the `\n`), at most
/// `MAX_TREE_ENTRIES` of them; a longer line or more lines is a
/// `Kind::Corrupt` error naming `what`.
pub struct Lines<R> {
    reader: R,
    what: String,
    count: usize,
}

impl<R: BufRead> Lines<R> {
    pub fn new(reader: R, what: impl Into<String>) -> Lines<R> {
        Lines {
            reader,
            what: what.into(),
            count: 0,
        }
    }
}

impl<R: BufRead> Iterator for Lines<R> {
    type Item = Result<Vec<u8>>;

    fn next(&mut self) -> Option<Result<Vec<u8>>> {
        let mut line = Vec::new();
        let limit = MAX_LINE as u64 + 1;
        let read = (&mut self.reader).take(limit).read_until(b'\n', &mut line);
        match read {
            Err(e) => return Some(Err(Error::io(format!("reading {}", self.what), e))),
            Ok(0) => return None,
            Ok(_) => {}
        }
        if line.last() == Some(&b'\n') {
            line.pop();
        } else if line.len() as u64 >= limit {
            return Some(Err(too_much(
                &self.what,
                format!("a line longer than {MAX_LINE} bytes"),
            )));
        }
        self.count += 1;
        if self.count > MAX_TREE_ENTRIES {
            return Some(Err(too_much(
                &self.what,
                format!("more than {MAX_TREE_ENTRIES} lines"),
            )));
        }
        Some(Ok(line))
    }
}

/// The error for input over a bound.
pub fn too_much(what: &str, found: String) -> Error {
    Error::new(
        Kind::Corrupt,
        format!("{what} holds {found}: more than any backup can produce, refusing to read on"),
    )
}

/// Reads `reader` whole, up to `limit` bytes.
pub fn read_text(reader: impl Read, limit: u64, what: &str) -> Result<String> {
    let mut bytes = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Error::io(format!("reading {what}"), e))?;
    if bytes.len() as u64 > limit {
        return Err(too_much(what, format!("more than {limit} bytes")));
    }
    String::from_utf8(bytes).map_err(|_| Error::new(Kind::Corrupt, format!("{what} is not text")))
}

/// `text` for an error message: escaped for a terminal, at most `max`
/// bytes of it (a record line or a server's answer can be long).
pub fn quote(text: &str, max: usize) -> String {
    let mut cut = text.len().min(max);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    let more = text.len() - cut;
    let shown = crate::human::escape(&text[..cut]);
    match more {
        0 => format!("\"{shown}\""),
        n => format!("\"{shown}\"… ({n} more bytes)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_without_end_is_an_error_not_memory() {
        // A sparse file of zeros as a target would serve it: one endless line.
        let endless = std::io::repeat(0).take(10 * MAX_LINE as u64);
        let mut lines = Lines::new(std::io::BufReader::new(endless), "record 1");
        let err = lines.next().unwrap().unwrap_err();
        assert_eq!(err.kind, Kind::Corrupt);
        assert!(
            err.message.contains("record 1 holds a line longer than"),
            "{err}"
        );
    }

    #[test]
    fn lines_are_split_and_the_last_may_lack_its_newline() {
        let lines: Vec<Vec<u8>> = Lines::new(&b"a\n\nbc"[..], "x")
            .map(|l| l.unwrap())
            .collect();
        assert_eq!(lines, [b"a".to_vec(), b"".to_vec(), b"bc".to_vec()]);
    }

    #[test]
    fn text_over_its_limit_is_refused() {
        let err = read_text(&b"12345"[..], 4, "the answer").unwrap_err();
        assert!(err.message.contains("more than 4 bytes"), "{err}");
        assert_eq!(read_text(&b"1234"[..], 4, "the answer").unwrap(), "1234");
    }

    #[test]
    fn quotes_are_short_and_escaped() {
        assert_eq!(quote("a\x1bb", 10), "\"a\\x1bb\"");
        assert_eq!(quote("abcdef", 3), "\"abc\"… (3 more bytes)");
    }
}
