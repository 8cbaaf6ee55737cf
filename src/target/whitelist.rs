//! A storage-box account: SFTP plus a few single commands (`rsync
//! --server`, `sha1sum`), no shell. Files, records and listings go over
//! SFTP (the sshfs mount, a [`PathTarget`]); data goes over `rsync
//! --server` when the job's transport is `rsync`; verify's sha1s are
//! computed by the server's `sha1sum` when it is allowed, in batches of
//! [`SHA1SUM_BATCH`] files, or, on a ciphersync server (`ciphersync
//! serve`), for the whole of files/ in one round trip (`ciphersync-server
//! sha1 DIR`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::listing::TreeEntry;
use super::ssh::remote_failure;
use super::{
    FILES, Keeps, PathTarget, Preflight, ReadBack, RecordCounts, RecordRequest, RemoteSums,
    RsyncDest, SHORT_COMMAND, Ssh, Target,
};
use crate::checksums;
use crate::error::{Error, Result};

/// Files per `sha1sum` command (one round trip each), and the bytes of
/// their paths: a storage box (or `ciphersync serve`, 128 KiB) bounds the
/// command line it accepts.
const SHA1SUM_BATCH: usize = 512;
const SHA1SUM_BATCH_BYTES: usize = 32 * 1024;

pub struct WhitelistTarget {
    /// Declared before `ssh`: the mount goes before the master it rides on.
    path: PathTarget,
    ssh: Ssh,
    rsync_over_ssh: bool,
    server_sha1sum: bool,
    /// A ciphersync server: `ciphersync-server sha1 DIR` lists the sums of
    /// a whole tree.
    tree_sha1: bool,
}

/// How verify gets the server's sums on a [`WhitelistTarget`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerSums {
    /// Read every file back through the mount.
    None,
    /// `sha1sum -- PATH...`, [`SHA1SUM_BATCH`] files a round trip.
    Sha1sum,
    /// `ciphersync-server sha1 DIR`: the whole tree in one round trip.
    Tree,
}

impl WhitelistTarget {
    pub fn new(
        path: PathTarget,
        ssh: Ssh,
        rsync_over_ssh: bool,
        sums: ServerSums,
    ) -> WhitelistTarget {
        WhitelistTarget {
            path,
            ssh,
            rsync_over_ssh,
            server_sha1sum: sums != ServerSums::None,
            tree_sha1: sums == ServerSums::Tree,
        }
    }

    /// `ciphersync-server sha1 <path>/files`: every file's sum in one
    /// answer, in the shell target's format (`./<path>`, sorted). Each
    /// line is parsed and written anew (the answer is the server's word:
    /// verify checks it against a sample read back), and each name must
    /// be a plain relative path.
    fn tree_sums(&self, into: File) -> Result<File> {
        let command = self.files_query("sha1");
        let mut result = self.ssh.exec(
            self.ssh
                .command(&command)
                .timeout(std::time::Duration::from_secs(24 * 3600)),
        )?;
        if result.code() == Some(255) {
            return Err(self
                .ssh
                .connection_error(&result.stderr, "computing checksums"));
        }
        if !result.success() {
            return Err(remote_failure(
                &self.ssh,
                &mut result,
                "ciphersync-server sha1 failed",
            ));
        }
        let mut list = BufWriter::new(into);
        let mut seen = 0usize;
        let mut last: Option<String> = None;
        checksums::read_list(result.stdout_reader()?, |name, sum| {
            let rel = name.strip_prefix("./").unwrap_or(&name);
            if rel.is_empty()
                || rel.starts_with('/')
                || rel
                    .split('/')
                    .any(|p| p.is_empty() || p == "." || p == "..")
                || last.as_deref().is_some_and(|l| l >= rel)
            {
                return Err(Error::new(
                    crate::error::Kind::Corrupt,
                    format!(
                        "ciphersync-server sha1 on {} answered a name out of order or not below files/: {}",
                        self.ssh.sftp().host,
                        crate::limits::quote(rel, 80)
                    ),
                ));
            }
            seen += 1;
            last = Some(rel.to_string());
            checksums::write_line(&mut list, rel, &sum)
                .map_err(|e| Error::io("writing the remote checksum list", e))
        })?;
        crate::log::debug(|| {
            format!("remote checksums: {seen} files in one `ciphersync-server sha1` round trip")
        });
        list.into_inner()
            .map_err(|e| Error::io("writing the remote checksum list", e.into_error()))
    }

    /// `ciphersync-server <query> <path>/files`, the path one word as
    /// serve parses it.
    fn files_query(&self, query: &str) -> String {
        let dir = self.ssh.sftp().path.join(FILES);
        format!(
            "ciphersync-server {query} {}",
            serve_word(&dir.to_string_lossy())
        )
    }

    /// `ciphersync-server stamps <path>/files`: the stamps of files/ (see
    /// the serve side's `stamps_below`), so that a backup with nothing to
    /// send can tell that nothing touched files/ since its last run, as on
    /// a shell account. None when the server gives no clear answer: the
    /// backup then runs rsync, which is never wrong, only slower.
    fn tree_stamps(&self) -> Option<String> {
        let command = self.files_query("stamps");
        let mut result = self
            .ssh
            .exec(
                self.ssh
                    .command(&command)
                    .timeout(super::ssh::SHORT_COMMAND),
            )
            .ok()?;
        let text = result.success().then(|| result.stdout_string().ok())??;
        let stamps = text.trim_end_matches('\n');
        if !super::shell::is_hex_sha1(stamps) {
            crate::log::debug(|| {
                format!(
                    "ciphersync-server stamps: no stamps in the answer ({})",
                    crate::limits::quote(stamps, 80)
                )
            });
            return None;
        }
        Some(stamps.to_string())
    }

    /// The stamps of files/: a ciphersync server's own (one round trip,
    /// to the nanosecond), else listed over SFTP.
    fn stamps(&self) -> Option<String> {
        match self.tree_sha1 {
            true => self.tree_stamps(),
            false => super::sftp_stamps(&self.ssh),
        }
    }

    /// `ciphersync-server quota`, before a backup writes anything: over
    /// its quota a ciphersync server refuses the backup's writes (and its
    /// SFTP sessions cannot add data), so the backup fails here with the
    /// server's own line rather than with a permission error on the way.
    fn check_quota(&self) -> Result<()> {
        match self.quota_refusal()? {
            None => Ok(()),
            Some(line) => Err(Error::new(
                crate::error::Kind::Refused,
                format!("the backup is refused: {line}"),
            )),
        }
    }

    /// The server's refusal line (after `user@host:port:`) when the
    /// account is over its quota, else
    /// None (within it, no quota, or a server from before quotas, which
    /// refuses the question).
    fn quota_refusal(&self) -> Result<Option<String>> {
        let what = "asking the server's quota";
        let mut out = self
            .ssh
            .run("ciphersync-server quota", what, SHORT_COMMAND)?;
        if out.success() {
            crate::log::debug(|| "server quota: within it, or none".to_string());
            return Ok(None);
        }
        let words = super::ssh::server_words(&mut out);
        if words.contains("command not allowed") {
            crate::log::debug(|| format!("server has no quota check: {words}"));
            return Ok(None);
        }
        let s = self.ssh.sftp();
        Ok(Some(format!(
            "{}@{}:{}: {}",
            s.user,
            s.host,
            s.port,
            // serve's own prefix says nothing the host does not.
            words.trim_start_matches("ciphersync: error: ")
        )))
    }

    /// `sha1sum -- files/...` on the server for one batch of paths below
    /// files/. Only names of the characters encrypted names use are sent:
    /// a storage box splits the command line its own way, and these need
    /// no quoting in any of them.
    fn sha1sum_batch(&self, rels: &[&str], out: &mut impl Write) -> Result<()> {
        let base = self.ssh.sftp().path.join(FILES);
        let prefix = format!("{}/", base.display());
        let mut command = String::from("sha1sum --");
        for rel in rels {
            command.push(' ');
            command.push_str(&prefix);
            command.push_str(rel);
        }
        let mut result = self
            .ssh
            .exec(self.ssh.command(&command).timeout(SHORT_COMMAND * 12))?;
        if result.code() == Some(255) {
            return Err(self
                .ssh
                .connection_error(&result.stderr, "computing checksums"));
        }
        if !result.success() {
            return Err(remote_failure(&self.ssh, &mut result, "sha1sum failed"));
        }
        let mut seen = 0;
        checksums::read_list(result.stdout_reader()?, |name, sum| {
            let rel = name.strip_prefix(&prefix).unwrap_or(&name);
            seen += 1;
            checksums::write_line(out, rel, &sum)
                .map_err(|e| Error::io("writing the remote checksum list", e))
        })?;
        if seen != rels.len() {
            return Err(Error::new(
                crate::error::Kind::Corrupt,
                format!(
                    "sha1sum on {} answered {seen} lines for {} files",
                    self.ssh.sftp().host,
                    rels.len()
                ),
            ));
        }
        Ok(())
    }

    /// The server's sha1s of the files whose names need no quoting; the
    /// others (plaintext names only) are read through the mount.
    fn server_sums(&self, into: File) -> Result<File> {
        let entries = self.path.list_tree(FILES)?;
        let files: Vec<&TreeEntry> = entries.iter().filter(|e| e.kind == 'f').collect();
        let (plain, odd): (Vec<&TreeEntry>, Vec<&TreeEntry>) =
            files.into_iter().partition(|e| needs_no_quoting(&e.path));
        let mut list = BufWriter::new(into);
        for batch in batches(&plain, &base_prefix_len(&self.ssh)) {
            crate::interrupt::check()?;
            let rels: Vec<&str> = batch.iter().map(|e| e.path.as_str()).collect();
            self.sha1sum_batch(&rels, &mut list)?;
        }
        let root = self.path.root().join(FILES);
        for entry in odd {
            let sum = checksums::hash_file(&root.join(&entry.path))?;
            checksums::write_line(&mut list, &entry.path, &sum)
                .map_err(|e| Error::io("writing the remote checksum list", e))?;
        }
        list.into_inner()
            .map_err(|e| Error::io("writing the remote checksum list", e.into_error()))
    }
}

/// The length of `<path>/files/` as each sha1sum argument starts.
fn base_prefix_len(ssh: &Ssh) -> usize {
    ssh.sftp().path.as_os_str().len() + FILES.len() + 2
}

/// Consecutive runs of `files` of at most SHA1SUM_BATCH files and
/// SHA1SUM_BATCH_BYTES of arguments (at least one file each).
fn batches<'e>(files: &[&'e TreeEntry], prefix: &usize) -> Vec<Vec<&'e TreeEntry>> {
    let mut out: Vec<Vec<&TreeEntry>> = Vec::new();
    let mut bytes = 0;
    for entry in files {
        let size = prefix + entry.path.len() + 1;
        match out.last_mut() {
            Some(batch) if batch.len() < SHA1SUM_BATCH && bytes + size <= SHA1SUM_BATCH_BYTES => {
                batch.push(entry);
                bytes += size;
            }
            _ => {
                out.push(vec![*entry]);
                bytes = size;
            }
        }
    }
    out
}

/// `word` as serve's request parser reads it back (request.rs): blanks
/// separate words and a backslash makes the next character literal, so
/// every character outside a plain set is escaped with one. Control
/// characters cannot be sent at all (serve refuses them).
fn serve_word(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        if !(c.is_ascii_alphanumeric() || "._/=-+,:@%".contains(c)) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn needs_no_quoting(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('-')
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/=-".contains(&b))
}

impl Target for WhitelistTarget {
    fn sftp_writes(&self) -> Option<&Ssh> {
        (!self.rsync_over_ssh).then_some(&self.ssh)
    }

    fn check_live(&self) -> Result<()> {
        self.path.check_live()
    }

    fn rsync_dest(&self, rel: &str) -> RsyncDest {
        match self.rsync_over_ssh {
            true => RsyncDest {
                location: self.ssh.rsync_location(&self.ssh.sftp().path.join(rel)),
                ssh_shell: Some(self.ssh.rsync_shell()),
                over_sshfs: false,
            },
            false => self.path.rsync_dest(rel),
        }
    }

    fn rsync_session(&self) -> Option<crate::budget::Permit<'_>> {
        self.rsync_over_ssh.then(|| self.ssh.session())
    }

    fn create_dir(&self, rel: &str) -> Result<()> {
        self.path.create_dir(rel)
    }

    fn free_bytes(&self) -> Option<u64> {
        self.path.free_bytes()
    }

    fn space(&self) -> Option<super::Space> {
        // No shell for df: the SFTP server's statvfs, through the mount.
        self.path.space()
    }

    fn keeps(&self) -> Keeps {
        match self.rsync_over_ssh {
            // rsync --server writes the account's own file system.
            true => Keeps::ALL,
            false => self.path.keeps(),
        }
    }

    fn keeps_known(&self, keeps: Keeps) {
        self.path.keeps_known(keeps);
    }

    fn connection_error(&self, stderr: &str, what: &str) -> Option<Error> {
        Some(self.ssh.connection_error(stderr, what))
    }

    fn read_file(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        self.path.read_file(rel, limit)
    }

    fn open_file(&self, rel: &str, scratch: File) -> Result<Option<File>> {
        self.path.open_file(rel, scratch)
    }

    fn write_file(&self, rel: &str, content: File) -> Result<()> {
        self.path.write_file(rel, content)
    }

    fn write_dir(&self, dirs: &[&str], from_to: (&Path, &str), names: &[String]) -> Result<()> {
        self.path.write_dir(dirs, from_to, names)
    }

    fn list_tree(&self, rel: &str) -> Result<Vec<TreeEntry>> {
        self.path.list_tree(rel)
    }

    fn list_names(&self, rel: &str) -> Result<Vec<String>> {
        self.path.list_names(rel)
    }

    fn remove(&self, rels: &[String]) -> Result<()> {
        self.path.remove(rels)
    }

    fn copy_within(&self, pairs: &[(String, String)]) -> Result<()> {
        self.path.copy_within(pairs)
    }

    fn remove_rsync_leftovers(&self) -> Result<usize> {
        self.path.remove_rsync_leftovers()
    }

    fn preflight(&self, known: Option<&str>, scratch_dir: &Path) -> Result<Preflight> {
        if self.tree_sha1 {
            self.check_quota()?;
        }
        let mut preflight = self.path.preflight(known, scratch_dir)?;
        // The newest run is the one the client knows (its record was not
        // read): a ciphersync server tells whether files/ is still as
        // that run left it.
        if preflight.last_id.is_some() && preflight.last_record.is_none() {
            preflight.target_stamps = self.stamps();
        }
        Ok(preflight)
    }

    fn write_record(&self, request: &RecordRequest) -> Result<RecordCounts> {
        let mut counts = self.path.write_record(request)?;
        counts.stamps = self.stamps();
        Ok(counts)
    }

    fn record_headers(&self, scratch_dir: &Path) -> Result<Vec<(String, String)>> {
        self.path.record_headers(scratch_dir)
    }

    fn checksums(&self, id: &str, into: File) -> Result<RemoteSums> {
        if self.tree_sha1 {
            return Ok(RemoteSums {
                file: self.tree_sums(into)?,
                by_server: true,
                stored: false,
            });
        }
        let base = self.ssh.sftp().path.to_string_lossy().into_owned();
        if !self.server_sha1sum || !needs_no_quoting(&base) {
            return self.path.checksums(id, into);
        }
        Ok(RemoteSums {
            file: self.server_sums(into)?,
            by_server: true,
            stored: false,
        })
    }

    fn store_checksum_lists(
        &self,
        id: &str,
        local: File,
        remote: Option<File>,
        keep: usize,
    ) -> Result<()> {
        let stored = self.path.store_checksum_lists(id, local, remote, keep);
        // Over its quota, a ciphersync server's SFTP session cannot add the
        // lists; verify has its answer already, and says why none is kept.
        if let Err(e) = &stored
            && self.tree_sha1
            && let Some(line) = self.quota_refusal()?
        {
            crate::log::warn(format!(
                "verify's checksum lists were not kept ({e}): {line}"
            ));
            return Ok(());
        }
        stored
    }

    fn sftp_reads(&self) -> Option<&Ssh> {
        Some(&self.ssh)
    }

    fn read_back(&self, point: &Path) -> Result<ReadBack<'_>> {
        self.path.read_back(point)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1sum_batches_bound_files_and_bytes() {
        let entry = |len: usize| TreeEntry {
            kind: 'f',
            mode: 0o644,
            size: 1,
            path: "a".repeat(len),
            link: None,
        };
        let short: Vec<TreeEntry> = (0..1200).map(|_| entry(20)).collect();
        let refs: Vec<&TreeEntry> = short.iter().collect();
        let sizes: Vec<usize> = batches(&refs, &10).iter().map(Vec::len).collect();
        assert_eq!(sizes, [512, 512, 176]);
        let long: Vec<TreeEntry> = (0..100).map(|_| entry(1000)).collect();
        let refs: Vec<&TreeEntry> = long.iter().collect();
        let parts = batches(&refs, &10);
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 100);
        assert!(
            parts.iter().all(|b| b.len() * 1011 <= SHA1SUM_BATCH_BYTES),
            "{:?}",
            parts.iter().map(Vec::len).collect::<Vec<_>>()
        );
        let huge = [entry(SHA1SUM_BATCH_BYTES * 2)];
        let refs: Vec<&TreeEntry> = huge.iter().collect();
        assert_eq!(
            batches(&refs, &10).len(),
            1,
            "a single long path still gets its batch"
        );
    }

    /// What serve_word writes, serve's parser reads back as one word.
    #[test]
    fn a_path_reaches_serve_as_one_word() {
        for path in [
            "/srv/backup/alice/files",
            "backup dir/files",
            "/a'b\"c$d;e|f&g*h?i[j]k{l}m~n#o(p)q<r>s`t\\u/files",
            "ünïcode/files",
        ] {
            let words = crate::serve::words(&serve_word(path)).unwrap();
            assert_eq!(words, [path.to_string()], "{path:?}");
        }
    }
}
