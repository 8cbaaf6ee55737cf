//! What a restore of the newest run asks an account before it pulls,
//! over one SFTP session that runs beside the sshfs mount: which runs
//! have a record, which have a snapshot dir, and the newest record
//! itself. Through the mount these are a dozen round trips one after the
//! other, after the mount; here about five, while the mount comes up
//! (docs/benchmarks.md, "the survey over SFTP").
//!
//! Names are checked as every SFTP listing checks them (sftp.rs); ids are
//! taken only where they parse as run ids, so a record's name is a plain
//! name below records/. The record is read into a scratch file, bounded
//! by the largest record there can be; the caller parses it as any other.

use std::fs::File;

use super::sftp::{self, Session};
use super::{RECORDS, SNAPSHOTS, Ssh};
use crate::error::Result;

/// The newest recorded run, as the account has it.
pub struct NewestRun {
    pub id: String,
    /// Its record, whole, rewound.
    pub record: File,
    /// The ids of every snapshot dir, oldest first.
    pub snapshot_ids: Vec<String>,
}

/// The newest run with a record and its record, read into `scratch`.
/// None where no run has a record, or the record went between the listing
/// and the read: the caller then asks through the mount, which says why.
pub fn newest_run(ssh: &Ssh, scratch: File) -> Result<Option<NewestRun>> {
    ssh.with_sftp(|session| newest_on(session, ssh, scratch))
}

fn newest_on(session: &mut Session, ssh: &Ssh, scratch: File) -> Result<Option<NewestRun>> {
    let mut listed = sftp::list_dirs(session, ssh, &[RECORDS, SNAPSHOTS])?;
    let mut names = |dir: &str| -> Vec<String> {
        let entries = listed.remove(dir).unwrap_or_default();
        entries.into_iter().map(|e| e.name.into_string()).collect()
    };
    let (records, snapshots) = (names(RECORDS), names(SNAPSHOTS));
    let Some(id) = crate::snapshots::ids_of_records(records).pop() else {
        return Ok(None);
    };
    let rel = crate::snapshots::record_path(&id);
    let room = crate::limits::MAX_RECORD_BYTES;
    let Some(record) = sftp::read_whole_on(session, ssh, &rel, scratch, room)? else {
        return Ok(None);
    };
    Ok(Some(NewestRun {
        id,
        record,
        snapshot_ids: crate::snapshots::ids_of_snapshot_dirs(snapshots),
    }))
}
