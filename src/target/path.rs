//! A target that is a local path: a local disk, or the SFTP account mounted
//! with sshfs. Works with any SFTP server: everything is a file operation.

use std::fs::File;
use std::io::{BufReader, BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::listing::{TreeEntry, list_local_tree};
use super::{
    CHECKSUMS, FILES, Keeps, MetadataFrom, Preflight, RECORDS, ReadBack, RecordCounts,
    RecordRequest, RemoteSums, RsyncDest, SNAPSHOTS, Space, Ssh, Target,
};
use crate::crypt::REMOTE_CONFIG_NAME;
use crate::error::{Error, IoContext, Kind, Result};
use crate::fsutil::AtomicFile;
use crate::mount::Mount;
use crate::{checksums, interrupt, log, walk};

/// gocryptfs.diriv (16 bytes), a long name's .name file (a name of at
/// most a few KiB) and gocryptfs.conf (about 1 KiB) are all a snapshot
/// dir is completed with: anything larger on the target is not one.
const GOCRYPTFS_SMALL_FILE_LIMIT: u64 = 64 * 1024;

/// What sshfs reports as the size (and free space) of a server that
/// cannot tell (sshfs.c, `sshfs_statfs` without the statvfs extension).
const SSHFS_MADE_UP_BYTES: u64 = 1000 * 1024 * 1024 * 1024;

pub struct PathTarget {
    root: PathBuf,
    /// The sshfs mount that `root` is, if any. Declared before `ssh`: it is
    /// unmounted before the ssh master it rides on goes away.
    mount: Option<Mount>,
    ssh: Option<Ssh>,
    /// What the SFTP server keeps, probed on first use (a local disk keeps
    /// everything).
    keeps: std::sync::OnceLock<Keeps>,
    /// The record of the run the client knows as the newest, read over
    /// SFTP during the preflight (`prefetch_record`), until it is asked for.
    prefetched: std::sync::Mutex<Option<(String, File)>>,
}

impl PathTarget {
    /// A local directory (a disk); it must exist.
    pub fn local(path: &Path) -> Result<PathTarget> {
        if !path.is_dir() {
            return Err(Error::new(
                Kind::Io,
                format!(
                    "target {} is not a directory (is the disk mounted?)",
                    path.display()
                ),
            ));
        }
        Ok(PathTarget {
            root: path.to_owned(),
            mount: None,
            ssh: None,
            keeps: std::sync::OnceLock::from(Keeps::ALL),
            prefetched: Default::default(),
        })
    }

    /// The account mounted with sshfs at `point`, keeping `ssh` with it.
    pub fn mounted(ssh: Ssh, point: &Path) -> Result<PathTarget> {
        // What follows the mount over an SFTP account asks over SFTP too
        // (the preflight's stamps, a restore's fetch): its session opens
        // while sshfs mounts.
        let ((), mounted) = crate::pool::both(
            || ssh.open_sftp_ahead(),
            || PathTarget::mount_with(&ssh, point),
        );
        Ok(mounted?.keeping(ssh))
    }

    /// This mount, now holding the `ssh` it rides on.
    pub fn keeping(mut self, ssh: Ssh) -> PathTarget {
        self.ssh = Some(ssh);
        self
    }

    /// The account mounted at `point` through `ssh`, which the caller keeps
    /// (and drops after this).
    pub fn mount_with(ssh: &Ssh, point: &Path) -> Result<PathTarget> {
        crate::mount::prepare_point(point)?;
        let mount = ssh.mount(point)?;
        log::debug(|| format!("remote mounted at {}", point.display()));
        Ok(PathTarget {
            root: point.to_owned(),
            mount: Some(mount),
            ssh: None,
            keeps: std::sync::OnceLock::new(),
            prefetched: Default::default(),
        })
    }

    /// A way to pull from the account with rsync over ssh (pull.rs), where
    /// it runs `rsync --server` and keeps what rsync carries (modes,
    /// symlinks); None for a local disk or any other account.
    ///
    /// `keeps_all`: whether the server keeps modes and symlinks, where the
    /// caller knows (the newest record says so); else it is found out
    /// with a probe dir, several round trips.
    pub fn puller(
        &self,
        job: &crate::config::Job,
        keeps_all: Option<bool>,
    ) -> Result<Option<super::Puller<'_>>> {
        let (Some(ssh), crate::config::Target::Sftp(sftp)) = (&self.ssh, &job.target) else {
            return Ok(None);
        };
        let keeps_all = keeps_all.unwrap_or_else(|| self.keeps().all());
        super::Puller::new(job, sftp, ssh, keeps_all)
    }

    /// The stamps of files/ over SFTP (sftp.rs, `tree_stamps`), for an
    /// SFTP account this target holds the ssh of; None for a local disk,
    /// or when the listing fails (the backup then runs rsync, which is
    /// never wrong, only slower).
    pub fn sftp_stamps(&self) -> Option<String> {
        super::sftp_stamps(self.ssh.as_ref()?)
    }

    /// The target's root as a local path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The root as rsync and other tools should reach it: through the
    /// pinned mount (see Mount::pinned), so a remount elsewhere is not
    /// followed.
    fn tool_root(&self) -> PathBuf {
        match &self.mount {
            Some(m) => m.pinned(),
            None => self.root.clone(),
        }
    }

    fn ensure_layout(&self) -> Result<()> {
        for dir in [FILES, SNAPSHOTS, CHECKSUMS, RECORDS] {
            let path = self.root.join(dir);
            if !path.is_dir() {
                std::fs::create_dir(&path)
                    .ctx(|| format!("cannot create {} on the target", path.display()))?;
            }
        }
        Ok(())
    }

    /// Ids of the runs with a record, oldest first.
    fn recorded_ids(&self) -> Result<Vec<String>> {
        Ok(crate::snapshots::ids_of_records(self.list_names(RECORDS)?))
    }

    /// A record's header: its lines up to the blank one, bounded.
    fn record_header(&self, id: &str) -> Result<String> {
        let rel = format!("{RECORDS}/{id}.rec");
        let file = crate::fsutil::open_below(&self.root, &rel)?
            .ok_or_else(|| Error::new(Kind::Corrupt, format!("{rel} vanished while listed")))?;
        let mut header = String::new();
        for line in crate::limits::Lines::new(BufReader::new(file), rel.clone()).take(64) {
            let line = String::from_utf8_lossy(&line?).into_owned();
            header.push_str(&line);
            header.push('\n');
            if line.is_empty() {
                break;
            }
        }
        Ok(header)
    }

    /// The record entries of a walk of files/, into a scratch file; counts
    /// the user's files and bytes. With `metadata_from`, modes come from the
    /// view and the view's symlinks join at their place in the order.
    /// The last run's entries under this run's header, where files/ holds
    /// what that run's record lists (`same_as`) and the server keeps modes
    /// and symlinks itself: copied instead of walking files/ again, which
    /// through sshfs costs round trips per directory. As the shell
    /// target's record.sh, only from a record that is intact (it names
    /// that run, and its entries add up to its counts): damage is not
    /// carried forward, files/ is walked instead.
    fn copy_last_entries(&self, request: &RecordRequest) -> Result<Option<(File, u64, u64)>> {
        let (Some(last), None) = (request.same_as, request.metadata_from) else {
            return Ok(None);
        };
        let Some(file) = self.read_record_file(last, request.scratch_dir)? else {
            return Ok(None);
        };
        let Ok(mut record) = crate::snapshots::RecordReader::new(BufReader::new(file)) else {
            return Ok(None);
        };
        if record.header.snapshot != last || record.header.metadata_in_record {
            return Ok(None);
        }
        let scratch = crate::exec::scratch_file(request.scratch_dir, "record")?;
        let mut entries = BufWriter::new(scratch);
        let (mut count, mut bytes) = (0u64, 0u64);
        for entry in record.by_ref() {
            interrupt::check()?;
            let Ok(entry) = entry else {
                return Ok(None);
            };
            if entry.is_user_file() {
                count += 1;
                bytes += entry.size;
            }
            entries
                .write_all(entry.record_line().as_bytes())
                .map_err(|e| Error::io("writing the record", e))?;
        }
        if (count, bytes) != (record.header.files, record.header.bytes) {
            return Ok(None);
        }
        log::debug(|| format!("record: the entries of {last} copied ({count} files)"));
        Ok(Some((rewound(entries)?, count, bytes)))
    }

    /// Run `id`'s record as the target has it: over SFTP with every part
    /// in flight where the account is reached by ssh (a record of 200,000
    /// files is 30 MB, through sshfs one part after the other), into a
    /// scratch file; else, or where SFTP fails, through the path.
    fn read_record_file(&self, id: &str, scratch_dir: &Path) -> Result<Option<File>> {
        let rel = format!("{RECORDS}/{id}.rec");
        let mut prefetched = self.prefetched.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, file)) = prefetched.take().filter(|(of, _)| of == id) {
            log::debug(|| format!("{rel}: the copy read beside the preflight"));
            return Ok(Some(file));
        }
        drop(prefetched);
        if let Some(ssh) = &self.ssh {
            let scratch = crate::exec::scratch_file(scratch_dir, "last-record")?;
            match super::sftp::read_whole(ssh, &rel, scratch, crate::limits::MAX_RECORD_BYTES) {
                Ok(Some(file)) => {
                    log::debug(|| format!("{rel} read over SFTP"));
                    return Ok(Some(file));
                }
                Ok(None) => return Ok(None),
                Err(e) if e.kind == Kind::Interrupted => return Err(e),
                Err(e) => {
                    log::debug(|| format!("{rel} read through the mount, not over SFTP: {e}"))
                }
            }
        }
        crate::fsutil::open_below(&self.root, &rel)
    }

    /// Reads run `id`'s record over SFTP for `read_record_file`: a run
    /// with nothing to send copies the entries of the run the client knows
    /// as the newest, and its record (30 MB for 200,000 files) comes while
    /// the preflight lists files/. Where it cannot be read now, it is read
    /// when asked for (a debug line says why).
    fn prefetch_record(&self, id: &str, scratch_dir: &Path) {
        let Some(ssh) = &self.ssh else {
            return;
        };
        let rel = format!("{RECORDS}/{id}.rec");
        let read = crate::exec::scratch_file(scratch_dir, "last-record").and_then(|scratch| {
            super::sftp::read_whole(ssh, &rel, scratch, crate::limits::MAX_RECORD_BYTES)
        });
        match read {
            Ok(Some(file)) => {
                log::debug(|| format!("{rel} read over SFTP beside the preflight"));
                let mut prefetched = self.prefetched.lock().unwrap_or_else(|e| e.into_inner());
                *prefetched = Some((id.to_owned(), file));
            }
            Ok(None) => log::debug(|| format!("{rel}: not there to read ahead")),
            Err(e) => log::debug(|| format!("{rel}: not read ahead over SFTP: {e}")),
        }
    }

    /// The record entries of files/ (see `write_entries`) and, on an SFTP
    /// account, the stamps of the same listing: over SFTP, with many
    /// requests in flight, rather than walking the mount one round trip
    /// at a time (a debug line says why when it falls back to the walk).
    fn list_files_for_record(
        &self,
        request: &RecordRequest,
    ) -> Result<(File, u64, u64, Option<String>)> {
        if let Some(ssh) = &self.ssh {
            match super::sftp::list_tree(ssh, FILES) {
                Ok(tree) => {
                    let (entries, files, bytes) =
                        self.write_entries(request, tree.sorted_entries().map(Ok))?;
                    return Ok((entries, files, bytes, Some(tree.stamps())));
                }
                Err(e) if e.kind == Kind::Interrupted => return Err(e),
                Err(e) => {
                    log::debug(|| format!("record: {FILES}/ walked, not listed over SFTP: {e}"))
                }
            }
        }
        let files = self.root.join(FILES);
        let walked = walk::sorted(&files).map(|entry| {
            let entry = entry.map_err(|e| walk::error(&files, e))?;
            TreeEntry::of(&files, &entry)
        });
        let (entries, count, bytes) = self.write_entries(request, walked)?;
        Ok((entries, count, bytes, self.sftp_stamps()))
    }

    /// Hashes every file of files/ read over SFTP, with many requests in
    /// flight (sftp.rs, `SftpFetcher::hash`), and hands the sums to `sink`
    /// sorted by path: through sshfs each file costs round trips that one
    /// reader waits for in turn (at 20 ms, data set S took 100 s). False,
    /// having handed on nothing, where this is no SFTP account or files/
    /// cannot be listed over SFTP (a debug line says why): the caller
    /// reads through the mount instead.
    fn hash_over_sftp(
        &self,
        mut sink: impl FnMut(&str, &checksums::Sum) -> Result<()>,
    ) -> Result<bool> {
        let Some(ssh) = &self.ssh else {
            return Ok(false);
        };
        let tree = match super::sftp::list_tree(ssh, FILES) {
            Ok(tree) => tree,
            Err(e) if e.kind == Kind::Interrupted => return Err(e),
            Err(e) => {
                log::debug(|| {
                    format!("verify: {FILES}/ read through sshfs, not listed over SFTP: {e}")
                });
                return Ok(false);
            }
        };
        // Sums arrive as files complete; they are handed on in the
        // listing's order (sorted by path, as every list: `diff` compares
        // two), by their place in it, without a second copy of the paths.
        let mut sums: Vec<Option<checksums::Sum>> = Vec::new();
        let mut each = |file: super::Hashed1| {
            if sums.len() <= file.order {
                sums.resize(file.order + 1, None);
            }
            sums[file.order] = Some(file.sum);
            Ok(())
        };
        let fetcher = super::sftp::SftpFetcher::new(ssh);
        let not = fetcher.hash(FILES, tree.sorted_entries(), &mut each)?;
        if !not.refused.is_empty() {
            return Err(Error::new(
                Kind::Remote,
                format!(
                    "the target would not give back {} file(s) of {FILES}/ to be hashed: {}",
                    not.refused.len(),
                    not.refused.join("; ")
                ),
            ));
        }
        let files = tree.sorted_entries().filter(|e| e.kind == 'f');
        for (entry, sum) in files.zip(&sums) {
            if let Some(sum) = sum {
                sink(&entry.path, sum)?;
            }
        }
        log::debug(|| {
            format!(
                "verify: {} file(s) of {FILES}/ hashed over SFTP; {} gone since listed: {}",
                sums.iter().flatten().count(),
                not.vanished.len(),
                crate::human::escape(&not.vanished.join("; "))
            )
        });
        Ok(true)
    }

    fn write_entries(
        &self,
        request: &RecordRequest,
        listed: impl Iterator<Item = Result<TreeEntry>>,
    ) -> Result<(File, u64, u64)> {
        let scratch = crate::exec::scratch_file(request.scratch_dir, "record")?;
        let mut entries = BufWriter::new(scratch);
        let write_error = |e: std::io::Error| Error::io("writing the record", e);
        let mut links = match request.metadata_from {
            Some(from) if from.symlinks => view_symlinks(from.view)?.into_iter().peekable(),
            _ => Vec::new().into_iter().peekable(),
        };
        let (mut count, mut bytes) = (0, 0);
        for tree_entry in listed {
            interrupt::check()?;
            let mut tree_entry = tree_entry?;
            let name = tree_entry.path.rsplit('/').next().unwrap_or_default();
            if request.skip_dot_names && name.starts_with('.') {
                continue;
            }
            if tree_entry.kind == '?' {
                continue;
            }
            while let Some(link) =
                links.next_if(|l| Path::new(&l.path) < Path::new(&tree_entry.path))
            {
                entries
                    .write_all(link.record_line().as_bytes())
                    .map_err(write_error)?;
            }
            if let Some(from) = request.metadata_from.filter(|f| f.modes) {
                tree_entry.mode = view_mode(from, &tree_entry).unwrap_or(tree_entry.mode);
            }
            if tree_entry.is_user_file() {
                count += 1;
                bytes += tree_entry.size;
            }
            entries
                .write_all(tree_entry.record_line().as_bytes())
                .map_err(write_error)?;
        }
        for link in links {
            entries
                .write_all(link.record_line().as_bytes())
                .map_err(write_error)?;
        }
        Ok((rewound(entries)?, count, bytes))
    }
}

/// Record entries written to a scratch file, flushed and read from the start.
fn rewound(entries: BufWriter<File>) -> Result<File> {
    let write_error = |e: std::io::Error| Error::io("writing the record", e);
    let mut entries = entries
        .into_inner()
        .map_err(|e| write_error(e.into_error()))?;
    entries.seek(SeekFrom::Start(0)).map_err(write_error)?;
    Ok(entries)
}

impl Target for PathTarget {
    fn sftp_writes(&self) -> Option<&Ssh> {
        self.ssh.as_ref()
    }

    fn check_live(&self) -> Result<()> {
        match &self.mount {
            Some(m) => m.check_live(),
            None => std::fs::read_dir(&self.root)
                .map(|_| ())
                .ctx(|| format!("target {}", self.root.display())),
        }
    }

    fn rsync_dest(&self, rel: &str) -> RsyncDest {
        RsyncDest {
            location: self.tool_root().join(rel).to_string_lossy().into_owned(),
            ssh_shell: None,
            over_sshfs: self.mount.is_some(),
        }
    }

    fn create_dir(&self, rel: &str) -> Result<()> {
        let dir = self.tool_root().join(rel);
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                Err(Error::io(format!("creating {}", dir.display()), e))
            }
            // sshfs can report a refused mkdir (a read-only server disk)
            // as "exists": believe only a directory that is there.
            _ if !std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) => Err(Error::new(
                Kind::Remote,
                format!(
                    "cannot create {rel} on the target: the server did not make it \
                     (its disk is read-only, full, or not writable by the account)"
                ),
            )),
            _ => Ok(()),
        }
    }

    fn free_bytes(&self) -> Option<u64> {
        nix::sys::statvfs::statvfs(&self.root)
            .ok()
            .map(|s| s.blocks_available() * s.fragment_size())
    }

    fn space(&self) -> Option<Space> {
        let stat = match nix::sys::statvfs::statvfs(&self.root) {
            Ok(stat) => stat,
            Err(e) => {
                log::debug(|| format!("statvfs {}: {e}", self.root.display()));
                return None;
            }
        };
        // sshfs answers for a server without `statvfs@openssh.com` with
        // made-up figures: 1000 GiB, all of it free, 10^9 inodes.
        let made_up = self.mount.is_some()
            && stat.blocks() == stat.blocks_free()
            && stat.blocks() == stat.blocks_available()
            && stat.blocks().saturating_mul(stat.fragment_size()) == SSHFS_MADE_UP_BYTES
            && stat.files() == stat.files_free();
        if made_up {
            log::debug(|| {
                "the SFTP server does not tell its free space (no statvfs@openssh.com)".into()
            });
            return None;
        }
        Some(Space::from_statvfs(&stat))
    }

    fn keeps(&self) -> Keeps {
        *self.keeps.get_or_init(|| probe_keeps(&self.tool_root()))
    }

    fn keeps_known(&self, keeps: Keeps) {
        // Set once: a probe's answer, where one ran already, stands.
        let _ = self.keeps.set(keeps);
    }

    fn connection_error(&self, stderr: &str, what: &str) -> Option<Error> {
        self.ssh.as_ref().map(|s| s.connection_error(stderr, what))
    }

    fn read_file(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let what = format!("{rel} on the target");
        match crate::fsutil::open_below(&self.root, rel)? {
            Some(file) => {
                crate::limits::read_text(file, limit, &what).map(|t| Some(t.into_bytes()))
            }
            None => Ok(None),
        }
    }

    fn open_file(&self, rel: &str, _scratch: File) -> Result<Option<File>> {
        crate::fsutil::open_below(&self.root, rel)
    }

    /// Over SFTP where the account is reached by ssh (every part in
    /// flight at once: sftp_write.rs), else (or where the server cannot
    /// rename in one step) through the path.
    fn write_file(&self, rel: &str, mut content: File) -> Result<()> {
        if let Some(ssh) = &self.ssh
            && super::sftp_write::write_file(ssh, rel, &mut content)?
        {
            return Ok(());
        }
        content
            .seek(SeekFrom::Start(0))
            .ctx(|| format!("rewinding the content of {rel}"))?;
        let mut file = AtomicFile::create_under(&self.root, rel)?;
        std::io::copy(&mut content, &mut file)
            .ctx(|| format!("writing {}", self.root.join(rel).display()))?;
        file.commit()
    }

    /// Over SFTP on one session where the account is reached by ssh
    /// (sftp_upload.rs, `upload_dir`); what that did not write goes
    /// through the path.
    fn write_dir(&self, dirs: &[&str], (from, to): (&Path, &str), names: &[String]) -> Result<()> {
        let left = match &self.ssh {
            Some(ssh) => super::sftp_upload::upload_dir(ssh, dirs, (from, to), names)?,
            None => names.to_vec(),
        };
        if left.is_empty() {
            log::debug(|| format!("{to}: {} file(s) written over SFTP", names.len()));
            return Ok(());
        }
        for dir in dirs {
            self.create_dir(dir)?;
        }
        super::write_each(self, (from, to), &left)
    }

    /// Over SFTP where the account is reached by ssh (many requests in
    /// flight), else by walking the path.
    fn list_tree(&self, rel: &str) -> Result<Vec<TreeEntry>> {
        if let Some(ssh) = &self.ssh {
            match super::sftp::list_tree(ssh, rel) {
                Ok(tree) => return Ok(tree.sorted_entries().collect()),
                Err(e) if e.kind == Kind::Interrupted => return Err(e),
                Err(e) => log::debug(|| format!("{rel} walked, not listed over SFTP: {e}")),
            }
        }
        list_local_tree(&self.root.join(rel))
    }

    fn list_names(&self, rel: &str) -> Result<Vec<String>> {
        let mut names: Vec<String> = match std::fs::read_dir(self.root.join(rel)) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(Error::io(format!("listing {rel} on the target"), e)),
        };
        names.sort();
        Ok(names)
    }

    fn remove(&self, rels: &[String]) -> Result<()> {
        for rel in rels {
            remove_local(&self.root.join(rel))?;
        }
        Ok(())
    }

    /// Over SFTP, hard links where the server makes them (many at once;
    /// what is copied here is never changed in place: rsync and the config
    /// upload replace a file by renaming a new one over it); copies of the
    /// rest through the path.
    fn copy_within(&self, pairs: &[(String, String)]) -> Result<()> {
        let unlinked = match &self.ssh {
            Some(ssh) if !pairs.is_empty() => match super::sftp_keep::link_within(ssh, pairs) {
                Ok(unlinked) => unlinked,
                Err(e) if e.kind == Kind::Interrupted => return Err(e),
                Err(e) => {
                    log::debug(|| format!("nothing linked over SFTP, all copied: {e}"));
                    pairs.to_vec()
                }
            },
            _ => pairs.to_vec(),
        };
        for (from, to) in &unlinked {
            interrupt::check()?;
            crate::fsutil::copy_below(&self.root, from, to, GOCRYPTFS_SMALL_FILE_LIMIT)?;
        }
        Ok(())
    }

    fn remove_rsync_leftovers(&self) -> Result<usize> {
        remove_dot_files(&self.root.join(FILES))
    }

    fn preflight(&self, known: Option<&str>, scratch_dir: &Path) -> Result<Preflight> {
        // Where the newest run is the one the client knows (its record is
        // not read), the stamps of files/ tell whether it is still as that
        // run left it. On an SFTP account they are listed over SFTP, side
        // by side with the reads through the mount: the client usually
        // knows the newest run, and each side is a few round trips. That
        // run's record, which a run with nothing to send copies, is read
        // over SFTP beside them.
        let (stamps, read) = crate::pool::both(
            || {
                let (stamps, ()) = crate::pool::both(
                    || known.and_then(|_| self.sftp_stamps()),
                    || {
                        if let Some(id) = known {
                            self.prefetch_record(id, scratch_dir);
                        }
                    },
                );
                stamps
            },
            || -> Result<_> {
                self.ensure_layout()?;
                let config = self.read_file(
                    &format!("{FILES}/{REMOTE_CONFIG_NAME}"),
                    crate::limits::MAX_SMALL_FILE,
                )?;
                let last_id = self.recorded_ids()?.pop();
                let last_record = match last_id.as_deref().filter(|id| Some(*id) != known) {
                    Some(id) => {
                        crate::fsutil::open_below(&self.root, &format!("{RECORDS}/{id}.rec"))?
                    }
                    None => None,
                };
                Ok((config, last_id, last_record))
            },
        );
        let (config, last_id, last_record) = read?;
        let target_stamps = match (&last_id, &last_record) {
            (Some(_), None) => stamps,
            _ => None,
        };
        Ok(Preflight {
            config,
            last_id,
            last_record,
            target_stamps,
        })
    }

    fn write_record(&self, request: &RecordRequest) -> Result<RecordCounts> {
        let copied = self.copy_last_entries(request)?;
        // Stamps the preflight took still hold when no rsync ran since.
        let known_stamps = copied.as_ref().and(request.known_stamps).map(str::to_owned);
        let (mut entries, files, bytes, listed_stamps) = match copied {
            Some((entries, files, bytes)) => (entries, files, bytes, None),
            None => self.list_files_for_record(request)?,
        };
        let header = request
            .header_format
            .replacen("%s", &files.to_string(), 1)
            .replacen("%s", &bytes.to_string(), 1);
        // Whole in a scratch file first: written as one file (over SFTP
        // where the account is reached by ssh, see `write_file`).
        let mut record = BufWriter::new(crate::exec::scratch_file(request.scratch_dir, "record")?);
        record
            .write_all(header.as_bytes())
            .and_then(|_| std::io::copy(&mut entries, &mut record).map(|_| ()))
            .map_err(|e| Error::io("writing the record", e))?;
        let record = record
            .into_inner()
            .map_err(|e| Error::io("writing the record", e.into_error()))?;
        self.write_file(&format!("{RECORDS}/{}.rec", request.id), record)?;
        Ok(RecordCounts {
            files,
            bytes,
            stamps: known_stamps
                .or(listed_stamps)
                .or_else(|| self.sftp_stamps()),
        })
    }

    fn record_headers(&self, _scratch_dir: &Path) -> Result<Vec<(String, String)>> {
        self.recorded_ids()?
            .into_iter()
            .map(|id| self.record_header(&id).map(|h| (id, h)))
            .collect()
    }

    fn checksums(&self, _id: &str, into: File) -> Result<RemoteSums> {
        let mut list = BufWriter::new(into);
        let write = |list: &mut BufWriter<File>, rel: &str, sum: &checksums::Sum| {
            checksums::write_line(list, rel, sum)
                .map_err(|e| Error::io("writing the remote checksum list", e))
        };
        if !self.hash_over_sftp(|rel, sum| write(&mut list, rel, sum))? {
            checksums::hash_tree(&self.root.join(FILES), None, |f| {
                write(&mut list, &f.rel, &f.sum)
            })?;
        }
        let file = list
            .into_inner()
            .map_err(|e| Error::io("writing the remote checksum list", e.into_error()))?;
        Ok(RemoteSums {
            file,
            by_server: false,
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
        self.write_file(&format!("{CHECKSUMS}/{id}.local.sha1"), local)?;
        if let Some(remote) = remote {
            self.write_file(&format!("{CHECKSUMS}/{id}.remote.sha1"), remote)?;
        }
        let names = self.list_names(CHECKSUMS)?;
        let mut runs: Vec<&str> = names
            .iter()
            .filter(|n| !n.starts_with('.'))
            .filter_map(|n| n.split('.').next())
            .collect();
        runs.dedup();
        let old = runs.len().saturating_sub(keep);
        let stale: Vec<String> = runs[..old]
            .iter()
            .flat_map(|run| {
                ["local", "remote"].map(|side| format!("{CHECKSUMS}/{run}.{side}.sha1"))
            })
            .collect();
        self.remove(&stale)
    }

    fn sftp_reads(&self) -> Option<&Ssh> {
        self.ssh.as_ref()
    }

    fn read_back(&self, _point: &Path) -> Result<ReadBack<'_>> {
        Ok(ReadBack {
            root: self.tool_root(),
            mount: None,
            _target: std::marker::PhantomData,
        })
    }
}

/// Tries, in a scratch dir next to files/, whether the server keeps a
/// mode and a symlink. A server that refuses even the scratch dir is taken
/// to keep both: rsync will then name whatever it refuses.
fn probe_keeps(root: &Path) -> Keeps {
    use std::os::unix::fs::PermissionsExt;
    log::debug(|| "asking the SFTP server what it keeps, in a probe dir".into());
    let Ok(suffix) = crate::fsutil::random_hex(6) else {
        return Keeps::ALL;
    };
    let dir = root.join(format!(".ciphersync-probe-{suffix}"));
    if std::fs::create_dir(&dir).is_err() {
        return Keeps::ALL;
    }
    let file = dir.join("mode");
    let modes = std::fs::write(&file, b"")
        .and_then(|_| std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o604)))
        .and_then(|_| std::fs::symlink_metadata(&file))
        .is_ok_and(|m| m.permissions().mode() & 0o777 == 0o604);
    let link = dir.join("link");
    let symlinks = std::os::unix::fs::symlink("ciphersync-probe", &link).is_ok()
        && std::fs::read_link(&link).is_ok_and(|t| t == Path::new("ciphersync-probe"));
    remove_local(&dir).unwrap_or_else(|e| log::warn(format!("cannot remove the probe dir: {e}")));
    let keeps = Keeps { modes, symlinks };
    if !keeps.all() {
        log::debug(|| format!("the SFTP server keeps {keeps:?}: the record keeps the rest"));
    }
    keeps
}

/// The view's symlinks as record entries with their (encrypted) targets,
/// in the order of a sorted walk.
fn view_symlinks(view: &Path) -> Result<Vec<TreeEntry>> {
    let mut links = Vec::new();
    for entry in walk::sorted(view) {
        interrupt::check()?;
        let entry = entry.map_err(|e| walk::error(view, e))?;
        if !entry.file_type().is_symlink() {
            continue;
        }
        let target = std::fs::read_link(entry.path())
            .ctx(|| format!("reading the link {}", entry.path().display()))?;
        let mut tree_entry = TreeEntry::of(view, &entry)?;
        tree_entry.size = target.as_os_str().len() as u64;
        tree_entry.link = Some(target.to_string_lossy().into_owned());
        links.push(tree_entry);
    }
    Ok(links)
}

/// The mode the view gives the entry, when it has one of the same kind.
fn view_mode(from: MetadataFrom, entry: &TreeEntry) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(from.view.join(&entry.path)).ok()?;
    let same_kind = match entry.kind {
        'f' => meta.is_file(),
        'd' => meta.is_dir(),
        _ => false,
    };
    same_kind.then_some(meta.mode() & 0o7777)
}

fn remove_local(path: &Path) -> Result<()> {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            make_dirs_writable(path);
            std::fs::remove_dir_all(path)
        }
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.ctx(|| format!("removing {}", path.display()))
}

/// A directory a backup kept read-only (0555, as in the source) cannot be
/// emptied by a non-root account: owner write first. Links are not
/// followed; a failure shows up in the removal that follows.
fn make_dirs_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for entry in walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
    {
        let Ok(meta) = entry.path().symlink_metadata() else {
            continue;
        };
        let mode = meta.permissions().mode();
        if meta.is_dir() && mode & 0o200 == 0 {
            let writable = std::fs::Permissions::from_mode((mode | 0o700) & 0o7777);
            let _ = std::fs::set_permissions(entry.path(), writable);
        }
    }
}

fn remove_dot_files(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for entry in walkdir::WalkDir::new(dir).min_depth(1) {
        interrupt::check()?;
        let entry = entry.map_err(|e| crate::walk::error(dir, e))?;
        let is_temp =
            entry.file_name().to_string_lossy().starts_with('.') && entry.file_type().is_file();
        if is_temp {
            std::fs::remove_file(entry.path())
                .ctx(|| format!("removing {}", entry.path().display()))?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A server that lost modes and symlinks: the record takes the view's
    /// modes and puts the view's symlinks in their place in the order.
    #[test]
    fn a_record_keeps_what_the_server_lost() {
        let base = std::env::temp_dir().join(format!(
            "ciphersync-keeps-{}-{}",
            std::process::id(),
            crate::fsutil::random_hex(4).unwrap()
        ));
        let (view, root) = (base.join("view"), base.join("target"));
        for dir in [view.join("Ab"), root.join("files/Ab"), root.join("records")] {
            std::fs::create_dir_all(dir).unwrap();
        }
        for tree in [&view, &root.join("files")] {
            std::fs::write(tree.join("Ab/Cd"), "abc").unwrap();
            std::fs::write(tree.join("Zz"), "z").unwrap();
        }
        std::fs::set_permissions(view.join("Ab/Cd"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::set_permissions(view.join("Ab"), std::fs::Permissions::from_mode(0o555)).unwrap();
        std::os::unix::fs::symlink("T3JpZ2luYWw", view.join("Ab/Link")).unwrap();
        std::os::unix::fs::symlink("U2Vjb25k", view.join("Mm")).unwrap();
        let target = PathTarget::local(&root).unwrap();
        let header = "ciphersync-record 2\nsnapshot 20261129T030000Z\nfiles %s\nbytes %s\n\
                      transferred 0\ndeleted 0\nchanged 0\nmetadata record\n\n";
        target
            .write_record(&RecordRequest {
                id: "20261129T030000Z",
                header_format: header,
                skip_dot_names: true,
                same_as: None,
                known_stamps: None,
                scratch_dir: &base,
                metadata_from: Some(MetadataFrom {
                    view: &view,
                    modes: true,
                    symlinks: true,
                }),
            })
            .unwrap();
        let text = std::fs::read_to_string(root.join("records/20261129T030000Z.rec")).unwrap();
        let entries: Vec<&str> = text.split_once("\n\n").unwrap().1.lines().collect();
        std::fs::set_permissions(view.join("Ab"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::remove_dir_all(&base).unwrap();
        assert_eq!(
            entries,
            [
                "d 555 0 Ab",
                "f 600 3 Ab/Cd",
                "L 777 11 Ab/Link\tT3JpZ2luYWw",
                "L 777 8 Mm\tU2Vjb25k",
                "f 644 1 Zz",
            ]
        );
    }

    /// An unchanged run copies the last record's entries (files/ is not
    /// walked: a file added behind the record's back stays out), unless
    /// that record is damaged: then files/ is walked.
    #[test]
    fn an_unchanged_run_copies_an_intact_last_record_only() {
        let base = std::env::temp_dir().join(format!(
            "ciphersync-copy-{}-{}",
            std::process::id(),
            crate::fsutil::random_hex(4).unwrap()
        ));
        let root = base.join("target");
        for dir in [root.join("files/Ab"), root.join("records")] {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(root.join("files/Ab/Cd"), "abc").unwrap();
        let target = PathTarget::local(&root).unwrap();
        let header = |id: &str| {
            format!(
                "ciphersync-record 1\nsnapshot {id}\nfiles %s\nbytes %s\n\
                 transferred 0\ndeleted 0\nchanged 0\n\n"
            )
        };
        let write = |id: &str, same_as: Option<&str>| {
            let format = header(id);
            let counts = target
                .write_record(&RecordRequest {
                    id,
                    header_format: &format,
                    skip_dot_names: true,
                    same_as,
                    known_stamps: None,
                    scratch_dir: &base,
                    metadata_from: None,
                })
                .unwrap();
            let text = std::fs::read_to_string(root.join(format!("records/{id}.rec"))).unwrap();
            let entries: Vec<String> = text
                .split_once("\n\n")
                .unwrap()
                .1
                .lines()
                .map(String::from)
                .collect();
            (counts.files, entries)
        };
        let (files, first) = write("20261129T030000Z", None);
        assert_eq!((files, first.len()), (1, 2), "{first:?}");
        // Not in the first record: a copy leaves it out, a walk sees it.
        std::fs::write(root.join("files/Zz"), "z").unwrap();
        let (files, copied) = write("20261130T030000Z", Some("20261129T030000Z"));
        assert_eq!(copied, first, "the entries were not copied");
        assert_eq!(files, 1);
        // Damage: the counts no longer add up, so files/ is walked.
        let damaged = root.join("records/20261130T030000Z.rec");
        let text = std::fs::read_to_string(&damaged).unwrap();
        std::fs::write(&damaged, text.replace("files 1\n", "files 7\n")).unwrap();
        let (files, walked) = write("20261201T030000Z", Some("20261130T030000Z"));
        std::fs::remove_dir_all(&base).unwrap();
        assert_eq!(files, 2, "a damaged record was copied: {walked:?}");
        assert!(walked.iter().any(|e| e.ends_with(" Zz")), "{walked:?}");
    }
}
