//! Keeping what a backup through sshfs replaces or deletes, over SFTP:
//! before rsync runs, each entry of files/ the view no longer has is moved
//! (RENAME) into the run's snapshot dir, and each file rsync will replace
//! is hard-linked there (`hardlink@openssh.com`), so that rsync runs
//! without `--backup` for them.
//!
//! Why: rsync's `--backup-dir` renames each old file across directories
//! through the mount, and the kernel lets one cross-directory rename run
//! at a time on a file system (`s_vfs_rename_mutex`): every worker waits
//! for every other's round trip. Measured on data set S at 20 ms after
//! the 1 % change (bench/analysis.md, "Issue 14: the change set"): each
//! such rename took 0.5 to 0.7 s, most of the backup. Here they travel
//! together, up to `MAX_IN_FLIGHT` at once, and the server does each in
//! microseconds.
//!
//! The snapshot gets what `--backup-dir` would have put there: the old
//! file under the same path (a hard link keeps its inode, and rsync writes
//! the new version to a temp file that it renames over the name: the old
//! inode is left to the snapshot). A file rsync then leaves alone (it
//! could not read the source) has an identical copy in the snapshot, which
//! loses nothing. Whatever fails here (a server without the extension, a
//! name already taken in the snapshot, a server that answers OK and does
//! nothing, as rclone does to a hard link: each result is looked up) is
//! returned, and rsync keeps it with `--backup` as before: this pass only
//! saves time.

use std::collections::HashMap;

use super::Ssh;
use super::sftp::{
    ATTR_ACMODTIME, ATTR_PERMISSIONS, HARDLINK, MAX_IN_FLIGHT, SSH_FXP_ATTRS, SSH_FXP_EXTENDED,
    SSH_FXP_LSTAT, SSH_FXP_MKDIR, SSH_FXP_STATUS, Session, put_u32, remote_base, remote_path,
};
use crate::error::Result;

const SSH_FXP_SETSTAT: u8 = 9;
const SSH_FXP_RENAME: u8 = 18;

/// What to keep, by paths relative to files/ (checked plain names
/// joined by `/`).
pub struct ToKeep<'a> {
    /// Entries the view lacks: moved into the snapshot.
    pub moves: &'a [String],
    /// Files rsync will replace: linked into the snapshot.
    pub links: &'a [String],
}

/// The paths that were not kept, for rsync to keep with `--backup`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NotKept {
    pub moves: Vec<String>,
    pub links: Vec<String>,
}

/// Keeps `what` in `snapshots/<snapshot>/` (which exists), making its
/// directories there (0700: only the owner reads a snapshot's
/// directories; the record keeps their modes).
pub fn keep_in_snapshot(ssh: &Ssh, snapshot: &str, what: &ToKeep) -> Result<NotKept> {
    let session = ssh.sftp_session()?;
    let files = remote_base(&ssh.sftp().path, super::FILES);
    let kept = remote_base(
        &ssh.sftp().path,
        &format!("{}/{snapshot}", super::SNAPSHOTS),
    );
    let can_link = session.offers(HARDLINK);
    let run = |session: &mut Session| -> Result<NotKept> {
        let parents = parents_of(
            what.moves
                .iter()
                .chain(what.links.iter().filter(|_| can_link)),
        );
        make_dirs(session, &kept, &parents)?;
        let mut requests: Vec<(u8, Vec<Vec<u8>>)> = Vec::new();
        for rel in what.moves {
            let fields = vec![remote_path(&files, rel), remote_path(&kept, rel)];
            requests.push((SSH_FXP_RENAME, fields));
        }
        if can_link {
            for rel in what.links {
                let fields = vec![
                    HARDLINK.as_bytes().to_vec(),
                    remote_path(&files, rel),
                    remote_path(&kept, rel),
                ];
                requests.push((SSH_FXP_EXTENDED, fields));
            }
        }
        let sent = send_all(session, &requests)?;
        let targets: Vec<Vec<u8>> = requests
            .iter()
            .map(|(_, f)| f[f.len() - 1].clone())
            .collect();
        let done = confirm(session, &targets, &sent)?;
        let (moved, linked) = done.split_at(what.moves.len());
        let failed = |paths: &[String], ok: &[bool]| -> Vec<String> {
            paths
                .iter()
                .enumerate()
                .filter(|(i, _)| !ok.get(*i).copied().unwrap_or(false))
                .map(|(_, p)| p.clone())
                .collect()
        };
        Ok(NotKept {
            moves: failed(what.moves, moved),
            links: failed(what.links, linked),
        })
    };
    session.work(run)
}

/// Hard-links each `(from, to)` pair of paths relative to the account's
/// directory (where `to`'s directory exists and `to` does not); returns the
/// pairs that were not linked, for the caller to copy. A server without
/// the extension links none.
pub fn link_within(ssh: &Ssh, pairs: &[(String, String)]) -> Result<Vec<(String, String)>> {
    let session = ssh.sftp_session()?;
    if !session.offers(HARDLINK) {
        session.give_back();
        return Ok(pairs.to_vec());
    }
    let path = |rel: &str| remote_base(&ssh.sftp().path, rel);
    let requests: Vec<(u8, Vec<Vec<u8>>)> = pairs
        .iter()
        .map(|(from, to)| {
            let fields = vec![HARDLINK.as_bytes().to_vec(), path(from), path(to)];
            (SSH_FXP_EXTENDED, fields)
        })
        .collect();
    let targets: Vec<Vec<u8>> = pairs.iter().map(|(_, to)| path(to)).collect();
    let linked = session.work(|session| {
        send_all(session, &requests).and_then(|sent| confirm(session, &targets, &sent))
    })?;
    Ok(pairs
        .iter()
        .zip(linked)
        .filter(|(_, ok)| !ok)
        .map(|(pair, _)| pair.clone())
        .collect())
}

/// Whether each request the server called done really left its `target`:
/// a server may answer OK to a request it does not carry out (rclone's
/// `serve sftp` answers `hardlink@openssh.com` so, and links nothing), and
/// an old version believed kept would be lost when rsync replaces it.
fn confirm(session: &mut Session, targets: &[Vec<u8>], sent: &[bool]) -> Result<Vec<bool>> {
    let asked: Vec<usize> = (0..targets.len()).filter(|&i| sent[i]).collect();
    let requests: Vec<(u8, Vec<Vec<u8>>)> = asked
        .iter()
        .map(|&i| (SSH_FXP_LSTAT, vec![targets[i].clone()]))
        .collect();
    let mut there = vec![false; targets.len()];
    for (&i, answer) in asked.iter().zip(exchange(session, &requests, &[])?) {
        there[i] = answer == SSH_FXP_ATTRS;
    }
    Ok(there)
}

/// Gives each directory of `files/` (relative, "" itself) its mode (where
/// `modes`: the server keeps them) and mtime, as rsync's last pass over the
/// directories does, all at once (SETSTAT); returns those the server
/// refused, for rsync. Deepest first, so that a mode that shuts a
/// directory does not stop the ones below it.
pub fn set_dir_attrs(ssh: &Ssh, dirs: &[(String, u32, u32)], modes: bool) -> Result<Vec<String>> {
    let files = remote_base(&ssh.sftp().path, super::FILES);
    let mut requests = Vec::new();
    let mut tails = Vec::new();
    for (rel, mode, mtime) in dirs {
        let path = match rel.is_empty() {
            true => files.clone(),
            false => remote_path(&files, rel),
        };
        let mut attrs = Vec::new();
        match modes {
            true => {
                put_u32(&mut attrs, ATTR_PERMISSIONS | ATTR_ACMODTIME);
                put_u32(&mut attrs, *mode);
            }
            false => put_u32(&mut attrs, ATTR_ACMODTIME),
        }
        put_u32(&mut attrs, *mtime);
        put_u32(&mut attrs, *mtime);
        requests.push((SSH_FXP_SETSTAT, vec![path]));
        tails.push(attrs);
    }
    let answers = ssh.with_sftp(|session| exchange_each(session, &requests, &tails))?;
    Ok(dirs
        .iter()
        .zip(answers)
        .filter(|(_, answer)| *answer != STATUS_OK)
        .map(|((rel, _, _), _)| rel.clone())
        .collect())
}

/// Every directory above the paths, each once, parents first.
fn parents_of<'a>(paths: impl Iterator<Item = &'a String>) -> Vec<String> {
    let mut dirs = std::collections::BTreeSet::new();
    for path in paths {
        for (i, c) in path.char_indices() {
            if c == '/' {
                dirs.insert(path[..i].to_string());
            }
        }
    }
    let mut dirs: Vec<String> = dirs.into_iter().collect();
    dirs.sort_by_key(|d| d.matches('/').count());
    dirs
}

/// Makes the directories one level at a time (a level's MKDIRs travel
/// together); one that exists is fine, and one that cannot be made fails
/// the keeping of what goes into it.
fn make_dirs(session: &mut Session, base: &[u8], dirs: &[String]) -> Result<()> {
    let mut attrs = Vec::new();
    put_u32(&mut attrs, ATTR_PERMISSIONS);
    put_u32(&mut attrs, 0o700);
    let mut start = 0;
    while start < dirs.len() {
        let depth = dirs[start].matches('/').count();
        let end = dirs[start..]
            .iter()
            .position(|d| d.matches('/').count() != depth)
            .map_or(dirs.len(), |n| start + n);
        let level: Vec<(u8, Vec<Vec<u8>>)> = dirs[start..end]
            .iter()
            .map(|d| (SSH_FXP_MKDIR, vec![remote_path(base, d)]))
            .collect();
        send_with(session, &level, &attrs)?;
        start = end;
    }
    Ok(())
}

/// Sends every request, at most `MAX_IN_FLIGHT` unanswered at once; for
/// each, whether the server answered OK.
fn send_all(session: &mut Session, requests: &[(u8, Vec<Vec<u8>>)]) -> Result<Vec<bool>> {
    send_with(session, requests, &[])
}

fn send_with(
    session: &mut Session,
    requests: &[(u8, Vec<Vec<u8>>)],
    tail: &[u8],
) -> Result<Vec<bool>> {
    let answers = exchange(session, requests, tail)?;
    Ok(answers.into_iter().map(|a| a == STATUS_OK).collect())
}

/// What `exchange` records for an SFTP status answer of OK (no packet
/// type is 0).
const STATUS_OK: u8 = 0;

/// Sends every request, at most `MAX_IN_FLIGHT` unanswered at once; for
/// each, the type of the answer (`STATUS_OK` for a status of OK).
fn exchange(
    session: &mut Session,
    requests: &[(u8, Vec<Vec<u8>>)],
    tail: &[u8],
) -> Result<Vec<u8>> {
    let tails = vec![tail.to_vec(); requests.len()];
    exchange_each(session, requests, &tails)
}

/// `exchange` with a tail of its own for each request.
fn exchange_each(
    session: &mut Session,
    requests: &[(u8, Vec<Vec<u8>>)],
    tails: &[Vec<u8>],
) -> Result<Vec<u8>> {
    let mut answers = vec![SSH_FXP_STATUS; requests.len()];
    let mut pending: HashMap<u32, usize> = HashMap::new();
    let mut next = 0;
    while next < requests.len() || !pending.is_empty() {
        while next < requests.len() && pending.len() < MAX_IN_FLIGHT {
            let (kind, fields) = &requests[next];
            let fields: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
            let id = session.request(*kind, &fields, &tails[next]);
            pending.insert(id, next);
            next += 1;
        }
        session.flush()?;
        let packet = session.receive()?;
        let Some(index) = pending.remove(&packet.id) else {
            return Err(super::sftp::unasked(packet.id));
        };
        answers[index] = match packet.kind {
            SSH_FXP_STATUS if packet.body.clone_u32() == Some(0) => STATUS_OK,
            kind => kind,
        };
    }
    Ok(answers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_come_first_and_once() {
        let paths = [
            "a/b/c".to_string(),
            "a/d".to_string(),
            "e".to_string(),
            "a/b/f".to_string(),
        ];
        assert_eq!(parents_of(paths.iter()), ["a", "a/b"]);
    }
}
