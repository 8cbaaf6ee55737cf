//! An account with a POSIX shell: bulk work runs on the server, one round
//! trip each, with the scripts in `scripts/` (lib.sh in front of each).
//! A script's values are positional arguments (`sh -c SCRIPT ciphersync
//! ARG...`), never text pasted into it. rsync goes over ssh, or into an
//! sshfs mount for the `sshfs` transport.

use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

use super::listing::{TreeEntry, parse_find_line};
use super::ssh::{quote_path, remote_failure};
use super::{
    Keeps, PathTarget, Preflight, ReadBack, RecordCounts, RecordRequest, RemoteSums, RsyncDest,
    SHORT_COMMAND, Space, Ssh, Target,
};
use crate::error::{Error, IoContext, Kind, Result};
use crate::exec::{Output, scratch_file, shell_quote};

/// A server-side script: lib.sh and the script itself.
struct Script {
    name: &'static str,
    text: &'static str,
}

macro_rules! script {
    ($name:literal) => {
        Script {
            name: $name,
            text: concat!(
                include_str!("scripts/lib.sh"),
                "\n",
                include_str!(concat!("scripts/", $name, ".sh"))
            ),
        }
    };
}

const PREFLIGHT: Script = script!("preflight");
const RECORD: Script = script!("record");
const HEADERS: Script = script!("headers");
const HASH: Script = script!("hash");
const STORE_LISTS: Script = script!("store_lists");
const LIST_TREE: Script = script!("list_tree");
const LIST_NAMES: Script = script!("list_names");
const REMOVE: Script = script!("remove");
const MKDIR: Script = script!("mkdir");
const READ_FILE: Script = script!("read_file");
const WRITE_FILE: Script = script!("write_file");
const COPY_WITHIN: Script = script!("copy_within");
const LEFTOVERS: Script = script!("leftovers");
const SPACE: Script = script!("space");

/// space.sh's answer, `space SIZE USED AVAILABLE` in KiB.
fn parse_space(text: &str) -> Option<Space> {
    let mut words = text.trim().split(' ');
    let kib = |w: Option<&str>| w?.parse::<u64>().ok().map(|n| n.saturating_mul(1024));
    if words.next() != Some("space") {
        return None;
    }
    let space = Space {
        size_bytes: kib(words.next())?,
        used_bytes: kib(words.next())?,
        free_bytes: kib(words.next())?,
    };
    words.next().is_none().then_some(space)
}

/// read_file.sh's exit status for a file that is not there.
const MISSING: i32 = 44;
/// Arguments per remote command for lists of paths: far below any
/// server's ARG_MAX.
const ARGV_BYTES: usize = 64 * 1024;

pub struct ShellTarget {
    /// The sshfs mount rsync writes into (transport `sshfs`). Declared
    /// before `ssh`, whose master it rides on.
    mount: Option<PathTarget>,
    ssh: Ssh,
}

/// One run of a script: what goes in and how long it may take.
struct Call<'a> {
    script: &'a Script,
    args: Vec<String>,
    what: &'a str,
    stdin: Option<File>,
    stdout: Option<File>,
    limit: Duration,
}

impl<'a> Call<'a> {
    fn new(script: &'a Script, what: &'a str) -> Call<'a> {
        Call {
            script,
            args: Vec::new(),
            what,
            stdin: None,
            stdout: None,
            limit: SHORT_COMMAND * 12,
        }
    }

    fn args<S: ToString>(mut self, args: impl IntoIterator<Item = S>) -> Call<'a> {
        self.args.extend(args.into_iter().map(|a| a.to_string()));
        self
    }

    fn stdin(mut self, file: File) -> Call<'a> {
        self.stdin = Some(file);
        self
    }

    fn stdout(mut self, file: File) -> Call<'a> {
        self.stdout = Some(file);
        self
    }

    fn limit(mut self, limit: Duration) -> Call<'a> {
        self.limit = limit;
        self
    }
}

impl ShellTarget {
    /// The account, with the sshfs mount at `mount_point` when rsync is to
    /// write through one.
    pub fn new(ssh: Ssh, mount_point: Option<&Path>) -> Result<ShellTarget> {
        let mount = match mount_point {
            Some(point) => Some(PathTarget::mount_with(&ssh, point)?),
            None => None,
        };
        Ok(ShellTarget { mount, ssh })
    }

    /// Runs a script in the target's root; the exit status is the caller's
    /// to judge, except ssh's 255 (the connection).
    fn run(&self, call: Call) -> Result<Output> {
        let mut command = format!(
            "cd {} && exec sh -c {} ciphersync",
            quote_path(&self.ssh.sftp().path),
            shell_quote(call.script.text)
        );
        for arg in &call.args {
            command.push(' ');
            command.push_str(&shell_quote(arg));
        }
        let mut cmd = self.ssh.command(&command).timeout(call.limit);
        if let Some(stdin) = call.stdin {
            cmd = cmd.stdin(stdin);
        }
        if let Some(stdout) = call.stdout {
            cmd = cmd.stdout_to(stdout);
        }
        crate::log::debug(|| format!("server script {}.sh {:?}", call.script.name, call.args));
        let out = self.ssh.exec(cmd)?;
        if out.code() == Some(255) {
            return Err(self.ssh.connection_error(&out.stderr, call.what));
        }
        Ok(out)
    }

    /// Runs a script that must succeed.
    fn run_ok(&self, call: Call) -> Result<Output> {
        let what = call.what;
        let mut out = self.run(call)?;
        if !out.success() {
            return Err(remote_failure(&self.ssh, &mut out, what));
        }
        Ok(out)
    }

    /// Runs `script` once per batch of `paths` that fits in one command.
    fn run_batched(&self, script: &Script, what: &str, paths: &[String]) -> Result<()> {
        for batch in batches(paths) {
            self.run_ok(Call::new(script, what).args(batch))?;
        }
        Ok(())
    }
}

/// Consecutive slices of `items` of at most ARGV_BYTES in all.
fn batches(items: &[String]) -> Vec<&[String]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        if bytes + item.len() > ARGV_BYTES && i > start {
            out.push(&items[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += item.len() + 3;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

impl Target for ShellTarget {
    fn sftp_writes(&self) -> Option<&Ssh> {
        self.mount.as_ref().map(|_| &self.ssh)
    }

    fn check_live(&self) -> Result<()> {
        match &self.mount {
            Some(m) => m.check_live(),
            None => Ok(()),
        }
    }

    fn rsync_dest(&self, rel: &str) -> RsyncDest {
        match &self.mount {
            Some(m) => m.rsync_dest(rel),
            None => RsyncDest {
                location: self.ssh.rsync_location(&self.ssh.sftp().path.join(rel)),
                ssh_shell: Some(self.ssh.rsync_shell()),
                over_sshfs: false,
            },
        }
    }

    fn rsync_session(&self) -> Option<crate::budget::Permit<'_>> {
        self.mount.is_none().then(|| self.ssh.session())
    }

    fn create_dir(&self, rel: &str) -> Result<()> {
        match &self.mount {
            Some(m) => m.create_dir(rel),
            None => self.run_batched(&MKDIR, "creating a directory", &[rel.to_string()]),
        }
    }

    fn free_bytes(&self) -> Option<u64> {
        self.mount.as_ref().and_then(|m| m.free_bytes())
    }

    fn space(&self) -> Option<Space> {
        let out = self.run(Call::new(&SPACE, "df").args(["."]).limit(SHORT_COMMAND));
        let answer = match out {
            Ok(mut out) if out.success() => out.stdout_string().ok(),
            Ok(out) => {
                crate::log::debug(|| format!("space.sh: exit {:?}: {}", out.code(), out.stderr));
                None
            }
            Err(e) => {
                crate::log::debug(|| format!("space.sh: {e}"));
                None
            }
        };
        answer.as_deref().and_then(parse_space)
    }

    fn keeps(&self) -> Keeps {
        // A POSIX account's own file system keeps both, whichever way
        // rsync reaches it.
        Keeps::ALL
    }

    fn connection_error(&self, stderr: &str, what: &str) -> Option<Error> {
        Some(self.ssh.connection_error(stderr, what))
    }

    fn read_file(&self, rel: &str, limit: u64) -> Result<Option<Vec<u8>>> {
        let what = format!("reading {rel}");
        let mut out = self.run(Call::new(&READ_FILE, &what).args([rel, &limit.to_string()]))?;
        match out.code() {
            Some(0) => crate::limits::read_text(
                out.stdout_reader()?,
                limit,
                &format!("{rel} on the target"),
            )
            .map(|t| Some(t.into_bytes())),
            Some(MISSING) => Ok(None),
            _ => Err(remote_failure(
                &self.ssh,
                &mut out,
                &format!("cannot read {rel}"),
            )),
        }
    }

    fn open_file(&self, rel: &str, scratch: File) -> Result<Option<File>> {
        let limit = crate::limits::MAX_RECORD_BYTES;
        let what = format!("reading {rel}");
        let call = Call::new(&READ_FILE, &what)
            .args([rel, &limit.to_string()])
            .stdout(scratch);
        let mut out = self.run(call)?;
        match out.code() {
            Some(0) => out.into_stdout().map(Some),
            Some(MISSING) => Ok(None),
            _ => Err(remote_failure(
                &self.ssh,
                &mut out,
                &format!("cannot read {rel}"),
            )),
        }
    }

    fn write_file(&self, rel: &str, mut content: File) -> Result<()> {
        content
            .seek(SeekFrom::Start(0))
            .ctx(|| format!("rewinding the content of {rel}"))?;
        let what = format!("cannot write {rel}");
        self.run_ok(Call::new(&WRITE_FILE, &what).args([rel]).stdin(content))
            .map(|_| ())
    }

    fn list_tree(&self, rel: &str) -> Result<Vec<TreeEntry>> {
        let what = format!("cannot list {rel}");
        let mut out = self.run_ok(Call::new(&LIST_TREE, &what).args([rel]))?;
        let text = out.stdout_string()?;
        text.split('\0')
            .filter(|l| !l.is_empty())
            .map(parse_find_line)
            .collect()
    }

    fn list_names(&self, rel: &str) -> Result<Vec<String>> {
        let what = format!("cannot list {rel}");
        let mut out = self.run_ok(Call::new(&LIST_NAMES, &what).args([rel]))?;
        let mut names: Vec<String> = out.stdout_string()?.lines().map(str::to_owned).collect();
        names.sort();
        Ok(names)
    }

    fn remove(&self, rels: &[String]) -> Result<()> {
        self.run_batched(&REMOVE, "cannot remove old files", rels)
    }

    fn copy_within(&self, pairs: &[(String, String)]) -> Result<()> {
        let flat: Vec<String> = pairs
            .iter()
            .flat_map(|(from, to)| [from.clone(), to.clone()])
            .collect();
        // Batches of whole pairs: an even count of arguments each.
        for batch in batches(&flat) {
            let (even, odd) = batch.split_at(batch.len() - batch.len() % 2);
            for part in [even, odd].into_iter().filter(|p| !p.is_empty()) {
                self.run_ok(Call::new(&COPY_WITHIN, "cannot complete a snapshot dir").args(part))?;
            }
        }
        Ok(())
    }

    fn remove_rsync_leftovers(&self) -> Result<usize> {
        let mut out = self.run_ok(Call::new(&LEFTOVERS, "cannot remove rsync temp files"))?;
        Ok(out.stdout_string()?.trim().parse().unwrap_or(0))
    }

    fn preflight(&self, known: Option<&str>, scratch_dir: &Path) -> Result<Preflight> {
        let call = Call::new(&PREFLIGHT, "preparing the target")
            .args([known.unwrap_or("")])
            .stdout(scratch_file(scratch_dir, "preflight")?);
        parse_preflight(self.run_ok(call)?.into_stdout()?)
    }

    fn write_record(&self, request: &RecordRequest) -> Result<RecordCounts> {
        let args = [
            request.id,
            request.header_format,
            if request.skip_dot_names { "1" } else { "0" },
            request.same_as.unwrap_or(""),
            request
                .known_stamps
                .filter(|s| is_hex_sha1(s))
                .unwrap_or(""),
        ];
        let call = Call::new(&RECORD, "writing the run's record")
            .args(args)
            .stdout(scratch_file(request.scratch_dir, "record-counts")?);
        let out = self.run_ok(call)?.into_stdout()?;
        parse_counts(&crate::limits::read_text(out, 1024, "the record counts")?)
    }

    fn record_headers(&self, scratch_dir: &Path) -> Result<Vec<(String, String)>> {
        let call = Call::new(&HEADERS, "listing the records")
            .stdout(scratch_file(scratch_dir, "headers")?);
        let out = self.run_ok(call)?.into_stdout()?;
        let text = crate::limits::read_text(out, crate::limits::MAX_TEXT, "the record headers")?;
        let fields: Vec<&str> = text.split('\0').collect();
        Ok(fields
            .chunks_exact(2)
            .map(|pair| (pair[0].to_string(), pair[1].to_string()))
            .collect())
    }

    fn checksums(&self, id: &str, into: File) -> Result<RemoteSums> {
        // A day bounds a server that hangs while answering keepalives.
        let call = Call::new(&HASH, "computing remote checksums")
            .args([id])
            .stdout(into)
            .limit(Duration::from_secs(24 * 3600));
        Ok(RemoteSums {
            file: self.run_ok(call)?.into_stdout()?,
            by_server: true,
            stored: true,
        })
    }

    fn store_checksum_lists(
        &self,
        id: &str,
        mut local: File,
        _remote: Option<File>,
        keep: usize,
    ) -> Result<()> {
        local
            .seek(SeekFrom::Start(0))
            .ctx(|| "rewinding the local list")?;
        let call = Call::new(&STORE_LISTS, "storing the checksum lists")
            .args([id.to_string(), keep.to_string()])
            .stdin(local);
        self.run_ok(call).map(|_| ())
    }

    fn sftp_reads(&self) -> Option<&Ssh> {
        Some(&self.ssh)
    }

    fn read_back(&self, point: &Path) -> Result<ReadBack<'_>> {
        crate::mount::prepare_point(point)?;
        let mount = self.ssh.mount(point)?;
        Ok(ReadBack {
            root: mount.pinned(),
            mount: Some(mount),
            _target: std::marker::PhantomData,
        })
    }
}

pub fn is_hex_sha1(text: &str) -> bool {
    text.len() == 40 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// record.sh's `<files> <bytes> <stamps>`.
fn parse_counts(text: &str) -> Result<RecordCounts> {
    let mut fields = text.split_whitespace();
    let mut count = || fields.next().and_then(|n| n.parse::<u64>().ok());
    let (Some(files), Some(bytes)) = (count(), count()) else {
        return Err(Error::new(
            Kind::Corrupt,
            format!(
                "unexpected counts from the server after writing the record: {}",
                crate::limits::quote(text, 200)
            ),
        ));
    };
    let stamps = text.split_whitespace().nth(2).filter(|s| is_hex_sha1(s));
    Ok(RecordCounts {
        files,
        bytes,
        stamps: stamps.map(String::from),
    })
}

/// `[C<config>] NUL [<id> NUL (<record> | =<stamps of files/>)]`, as
/// preflight.sh prints it. The record is left in the file, to be streamed.
fn parse_preflight(out: File) -> Result<Preflight> {
    use std::io::{BufRead, Read};
    let corrupt = || {
        Error::new(
            Kind::Corrupt,
            "unexpected output from the server while preparing the target",
        )
    };
    let mut reader = BufReader::new(out);
    let read_field = |reader: &mut BufReader<File>| -> Result<Option<Vec<u8>>> {
        let mut field = Vec::new();
        reader
            .by_ref()
            .take(crate::limits::MAX_SMALL_FILE + 1)
            .read_until(0, &mut field)
            .ctx(|| "reading the server's answer")?;
        match field.pop() {
            None => Ok(None),
            Some(0) => Ok(Some(field)),
            Some(_) => Err(corrupt()),
        }
    };
    let config = match read_field(&mut reader)?.ok_or_else(corrupt)?.as_slice() {
        [] => None,
        [b'C', conf @ ..] => Some(conf.to_vec()),
        _ => return Err(corrupt()),
    };
    let Some(id) = read_field(&mut reader)? else {
        return Ok(Preflight {
            config,
            last_id: None,
            last_record: None,
            target_stamps: None,
        });
    };
    let id = String::from_utf8(id)
        .ok()
        .filter(|id| crate::status::parse_snapshot_id(id).is_some())
        .ok_or_else(corrupt)?;
    // What follows is the record, or `=` and the stamps.
    let position = reader
        .stream_position()
        .ctx(|| "reading the server's answer")?;
    let mut file = reader.into_inner();
    file.seek(SeekFrom::Start(position))
        .ctx(|| "reading the server's answer")?;
    let mut first = [0u8; 1];
    let got = file
        .read(&mut first)
        .ctx(|| "reading the server's answer")?;
    if got == 1 && first[0] == b'=' {
        let stamps = crate::limits::read_text(&mut file, 64, "the stamps of files/")?;
        return Ok(Preflight {
            config,
            last_id: Some(id),
            last_record: None,
            target_stamps: Some(stamps).filter(|s| is_hex_sha1(s)),
        });
    }
    file.seek(SeekFrom::Start(position))
        .ctx(|| "reading the server's answer")?;
    Ok(Preflight {
        config,
        last_id: Some(id),
        last_record: Some(file),
        target_stamps: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksums;
    use crate::target::{CHECKSUMS, FILES, RECORDS, SNAPSHOTS};
    use std::path::PathBuf;

    /// A scratch dir that is removed again.
    struct Root(PathBuf);

    impl Root {
        fn new(tag: &str) -> Root {
            let dir = std::env::temp_dir().join(format!(
                "ciphersync-{tag}-{}-{}",
                std::process::id(),
                crate::fsutil::random_hex(4).unwrap()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Root(dir)
        }
    }

    impl Drop for Root {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Runs a script in `root` as ShellTarget::run has the server's sh run
    /// it; `path` replaces PATH first when given.
    fn run_here(script: &Script, args: &[&str], root: &Path, path: Option<&Path>) -> Output {
        let text = match path {
            Some(dir) => format!(
                "PATH={}\n{}",
                shell_quote(&dir.to_string_lossy()),
                script.text
            ),
            None => script.text.to_string(),
        };
        let out = crate::exec::Cmd::new("sh")
            .arg("-c")
            .arg(text)
            .arg("ciphersync")
            .args(args)
            .cwd(root)
            .run()
            .unwrap();
        assert!(out.success(), "{}.sh {args:?}: {}", script.name, out.stderr);
        out
    }

    /// The preflight script on an empty target and on one with a config and
    /// two records.
    #[test]
    fn preflight_on_a_real_shell() {
        let root = Root::new("preflight");
        let root = &root.0;
        let run = |known: &str| {
            let out = run_here(&PREFLIGHT, &[known], root, None);
            parse_preflight(out.into_stdout().unwrap()).unwrap()
        };
        let empty = run("");
        assert!(empty.config.is_none(), "config on an empty target");
        assert!(empty.last_record.is_none(), "record on an empty target");
        for dir in [FILES, SNAPSHOTS, CHECKSUMS, RECORDS] {
            assert!(root.join(dir).is_dir(), "{dir} not created");
        }
        std::fs::write(root.join("files/gocryptfs.conf"), "{\"conf\": 1}").unwrap();
        let record = "ciphersync-record 1\nsnapshot 20261129T030000Z\n\nf 644 3 Ab\n";
        std::fs::write(root.join("records/20261128T030000Z.rec"), "older").unwrap();
        std::fs::write(root.join("records/20261129T030000Z.rec"), record).unwrap();
        std::fs::write(root.join("records/.20261130T030000Z.rec.partial"), "half").unwrap();
        let known = run("");
        assert_eq!(known.config.as_deref(), Some(&b"{\"conf\": 1}"[..]));
        assert_eq!(known.last_id.as_deref(), Some("20261129T030000Z"));
        let mut sent = String::new();
        std::io::Read::read_to_string(&mut known.last_record.unwrap(), &mut sent).unwrap();
        assert_eq!(sent, record);
        // A run that knows the last record does not get it again, but the
        // stamps of files/, which move with any change.
        let knowing = run("20261129T030000Z");
        assert_eq!(knowing.last_id.as_deref(), Some("20261129T030000Z"));
        assert!(knowing.last_record.is_none(), "record sent again");
        let stamps = knowing.target_stamps.expect("stamps");
        assert_eq!(run("20261129T030000Z").target_stamps, Some(stamps.clone()));
        let conf = root.join("files/gocryptfs.conf");
        let file = File::options().write(true).open(&conf).unwrap();
        file.set_modified(std::time::UNIX_EPOCH).unwrap();
        assert_ne!(run("20261129T030000Z").target_stamps, Some(stamps));
        // ...but gets the record when the newest one is another.
        assert!(run("20261128T030000Z").last_record.is_some());
    }

    const HEADER: &str = "ciphersync-record 1\nsnapshot 20261129T030000Z\nfiles %s\nbytes %s\n\
                          transferred 2\ndeleted 1\nchanged 3\n\n";
    const NEXT_HEADER: &str = "ciphersync-record 1\nsnapshot 20261130T030000Z\nfiles %s\nbytes %s\n\
                               transferred 0\ndeleted 0\nchanged 0\n\n";

    fn files_for_a_record(root: &Path) {
        let files = root.join(FILES);
        std::fs::create_dir_all(files.join("Ab")).unwrap();
        std::fs::create_dir_all(root.join(RECORDS)).unwrap();
        for (path, content) in [
            ("gocryptfs.conf", "{}"),
            ("gocryptfs.diriv", "iv"),
            ("Ab/gocryptfs.diriv", "iv"),
            ("Ab/Cd", "abc"),
            ("gocryptfs.longname.XYZ", "12345"),
            ("gocryptfs.longname.XYZ.name", "long"),
            (".Ab.x1Y2z3", "rsync temp"),
        ] {
            std::fs::write(files.join(path), content).unwrap();
        }
        std::os::unix::fs::symlink("target", files.join("Kl")).unwrap();
    }

    /// record.sh: the counts and stamps it prints.
    fn record_here(root: &Path, args: &[&str]) -> (String, String) {
        let mut out = run_here(&RECORD, args, root, None);
        let printed = out.stdout_string().unwrap();
        let (counts, stamps) = printed.trim().rsplit_once(' ').unwrap();
        assert!(is_hex_sha1(stamps), "{printed}");
        (counts.to_string(), stamps.to_string())
    }

    /// The record the server's shell writes (find, sort, awk) and the one a
    /// path target writes from a walk agree, counts included.
    #[test]
    fn the_server_and_the_walk_write_the_same_record() {
        let root = Root::new("record");
        let root = &root.0;
        files_for_a_record(root);
        let record_file = root.join("records/20261129T030000Z.rec");
        let (counts, _) = record_here(root, &["20261129T030000Z", HEADER, "1", "", ""]);
        assert_eq!(counts, "2 8");
        let by_server = std::fs::read_to_string(&record_file).unwrap();
        std::fs::remove_file(&record_file).unwrap();
        let walked = PathTarget::local(root)
            .unwrap()
            .write_record(&RecordRequest {
                id: "20261129T030000Z",
                header_format: HEADER,
                skip_dot_names: true,
                same_as: None,
                known_stamps: None,
                scratch_dir: root,
                metadata_from: None,
            })
            .unwrap();
        assert_eq!((walked.files, walked.bytes), (2, 8));
        assert_eq!(std::fs::read_to_string(&record_file).unwrap(), by_server);
        assert!(!by_server.contains(".Ab.x1Y2z3"), "{by_server}");
        assert!(
            by_server
                .starts_with("ciphersync-record 1\nsnapshot 20261129T030000Z\nfiles 2\nbytes 8\n")
        );
        assert_eq!(by_server.lines().skip(8).count(), 8, "{by_server}");
    }

    /// A run that changed nothing copies the last record under its header;
    /// a damaged or old-style last record makes it list files/ instead.
    #[test]
    fn an_unchanged_run_copies_the_last_record() {
        let root = Root::new("record-copy");
        let root = &root.0;
        files_for_a_record(root);
        let last = root.join("records/20261129T030000Z.rec");
        let next = root.join("records/20261130T030000Z.rec");
        record_here(root, &["20261129T030000Z", HEADER, "1", "", ""]);
        let good = std::fs::read_to_string(&last).unwrap();
        let entries = |text: &str| text.split_once("\n\n").unwrap().1.to_string();
        // Not listed by a copy: the copy does not look at files/.
        std::fs::write(root.join("files/Ab/Cd"), "abc + not listed by a copy").unwrap();
        let copy = |stamps: &str| {
            let out = record_here(
                root,
                &[
                    "20261130T030000Z",
                    NEXT_HEADER,
                    "1",
                    "20261129T030000Z",
                    stamps,
                ],
            );
            (out, std::fs::read_to_string(&next).unwrap())
        };
        let ((counts, _), copied) = copy("");
        assert_eq!(counts, "2 8");
        assert_eq!(entries(&copied), entries(&good));
        assert!(
            copied
                .starts_with("ciphersync-record 1\nsnapshot 20261130T030000Z\nfiles 2\nbytes 8\n"),
            "{copied}"
        );
        // Stamps taken by the preflight are passed on, not taken again.
        let known = "0123456789abcdef0123456789abcdef01234567";
        assert_eq!(copy(known).0.1, known);
        // A truncated last record (the header says 2 files, fewer entries):
        // listed again, the change included.
        let truncated: Vec<&str> = good.lines().take(9).collect();
        std::fs::write(&last, truncated.join("\n") + "\n").unwrap();
        assert_eq!(copy("").0.0, "2 31");
        // An old-style header (no counts): listed again.
        std::fs::write(
            &last,
            "ciphersync-record 1\nsnapshot 20261129T030000Z\n\nf 644 3 Ab/Cd\n",
        )
        .unwrap();
        let ((counts, stamps), listed) = copy(known);
        assert_eq!(counts, "2 31");
        assert_ne!(stamps, known, "stamps of a listing are taken fresh");
        assert_ne!(entries(&listed), entries(&good));
    }

    /// The server's hash script lists a tree exactly as our own hashing
    /// does, odd names included, with openssl and with sha1sum alone.
    #[test]
    fn the_remote_hash_script_agrees_with_our_list() {
        let root = Root::new("rhash");
        let root = &root.0;
        let files = root.join(FILES);
        std::fs::create_dir_all(files.join("Ab/dir with space")).unwrap();
        let names = [
            "Ab/Cd_-x.y",
            "gocryptfs.diriv",
            "odd\nname",
            "back\\slash",
            "ünï",
            "Ab/dir with space/f",
            "-dash",
        ];
        for (i, name) in names.iter().enumerate() {
            std::fs::write(files.join(name), vec![i as u8; 1000 * i]).unwrap();
        }
        let mut ours = Vec::new();
        checksums::hash_tree(&files, None, |f| {
            checksums::write_line(&mut ours, &f.rel, &f.sum).map_err(|e| Error::io("list", e))
        })
        .unwrap();
        // A PATH with every tool the script uses but openssl.
        let bin = root.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let which = |tool: &str| {
            let mut out = crate::exec::Cmd::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .run()
                .unwrap();
            out.success()
                .then(|| out.stdout_string().unwrap().trim().to_string())
        };
        for tool in [
            "mkdir", "xargs", "nproc", "stdbuf", "find", "sed", "sort", "rm", "mv", "cat",
            "sha1sum",
        ] {
            let found = which(tool).unwrap_or_else(|| panic!("{tool} is missing"));
            std::os::unix::fs::symlink(found, bin.join(tool)).unwrap();
        }
        assert!(
            which("openssl").is_some() || std::env::var_os("CI").is_none(),
            "openssl is missing in CI"
        );
        for path in [None, Some(bin.as_path())] {
            let mut out = run_here(&HASH, &["20261129T030000Z"], root, path);
            let listed = out.stdout_string().unwrap();
            assert_eq!(listed, String::from_utf8_lossy(&ours), "PATH {path:?}");
            let kept = root.join(CHECKSUMS).join("20261129T030000Z.remote.sha1");
            assert_eq!(std::fs::read(kept).unwrap(), ours);
            let left: Vec<_> = std::fs::read_dir(root.join(CHECKSUMS)).unwrap().collect();
            assert_eq!(left.len(), 1, "temp files left: {left:?}");
        }
    }

    /// The small scripts do what the path target does, odd names included.
    #[test]
    fn file_scripts_handle_odd_names() {
        let root = Root::new("files");
        let root = &root.0;
        std::fs::create_dir_all(root.join("checksums")).unwrap();
        let odd = "checksums/a 'b' $(c) -d\n";
        let mut content = crate::target::bytes_file(b"hello").unwrap();
        content.seek(SeekFrom::Start(0)).unwrap();
        crate::exec::Cmd::new("sh")
            .arg("-c")
            .arg(WRITE_FILE.text)
            .arg("ciphersync")
            .arg(odd)
            .stdin(content)
            .cwd(root)
            .run()
            .unwrap();
        assert_eq!(std::fs::read(root.join(odd)).unwrap(), b"hello");
        let mut read = run_here(&READ_FILE, &[odd, "3"], root, None);
        assert_eq!(read.stdout_string().unwrap(), "hel");
        let mut names = run_here(&LIST_NAMES, &["checksums"], root, None);
        assert_eq!(names.stdout_string().unwrap(), "a 'b' $(c) -d\n\n");
        run_here(&COPY_WITHIN, &[odd, "checksums/copy"], root, None);
        assert_eq!(
            std::fs::read(root.join("checksums/copy")).unwrap(),
            b"hello"
        );
        run_here(&REMOVE, &[odd, "checksums/copy"], root, None);
        assert_eq!(
            std::fs::read_dir(root.join("checksums")).unwrap().count(),
            0
        );
        run_here(&MKDIR, &["snapshots/x y"], root, None);
        assert!(root.join("snapshots/x y").is_dir());
    }

    /// space.sh says what statvfs says (df counts the same blocks), and
    /// its answer parses; anything else is no answer.
    #[test]
    fn the_space_script_agrees_with_statvfs() {
        let root = Root::new("space");
        let root = &root.0;
        let mut out = run_here(&SPACE, &["."], root, None);
        let got = parse_space(&out.stdout_string().unwrap()).expect("an answer");
        let want = Space::from_statvfs(&nix::sys::statvfs::statvfs(root.as_path()).unwrap());
        assert_eq!(got.size_bytes, want.size_bytes);
        // Others write to /tmp meanwhile: used and free within 64 MiB.
        let near = |a: u64, b: u64| a.abs_diff(b) < 64 << 20;
        assert!(near(got.used_bytes, want.used_bytes), "{got:?} {want:?}");
        assert!(near(got.free_bytes, want.free_bytes), "{got:?} {want:?}");
        // A directory that is not there: exit 45, no answer.
        let missing = crate::exec::Cmd::new("sh")
            .arg("-c")
            .arg(SPACE.text)
            .arg("ciphersync")
            .arg("no such dir")
            .cwd(root)
            .run()
            .unwrap();
        assert_eq!(missing.code(), Some(45), "{}", missing.stderr);
        assert_eq!(
            parse_space("space 10 4 6\n"),
            Some(Space {
                size_bytes: 10240,
                used_bytes: 4096,
                free_bytes: 6144
            })
        );
        for bad in [
            "",
            "space 1 2",
            "space 1 2 3 4",
            "space a 2 3",
            "disk 1 2 3",
        ] {
            assert_eq!(parse_space(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn store_lists_keeps_the_newest_runs() {
        let root = Root::new("lists");
        let root = &root.0;
        std::fs::create_dir_all(root.join(CHECKSUMS)).unwrap();
        for day in 1..=4 {
            for side in ["local", "remote"] {
                std::fs::write(
                    root.join(format!("checksums/2026110{day}T000000Z.{side}.sha1")),
                    "x",
                )
                .unwrap();
            }
        }
        let list = crate::target::bytes_file(b"ours").unwrap();
        crate::exec::Cmd::new("sh")
            .arg("-c")
            .arg(STORE_LISTS.text)
            .arg("ciphersync")
            .args(["20261105T000000Z", "2"])
            .stdin(list)
            .cwd(root)
            .run()
            .unwrap();
        let mut left: Vec<String> = std::fs::read_dir(root.join(CHECKSUMS))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "20261104T000000Z.local.sha1",
                "20261104T000000Z.remote.sha1",
                "20261105T000000Z.local.sha1"
            ]
        );
    }

    /// Every script passes shellcheck (as POSIX sh); a machine without
    /// shellcheck skips this, except in CI.
    #[test]
    fn scripts_pass_shellcheck() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/target/scripts");
        if crate::exec::Cmd::new("shellcheck")
            .arg("--version")
            .run()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "shellcheck is missing in CI"
            );
            if let Some(log) = std::env::var_os("CIPHERSYNC_TEST_SKIP_LOG") {
                use std::io::Write;
                let mut f = File::options().create(true).append(true).open(log).unwrap();
                writeln!(f, "scripts_pass_shellcheck\tshellcheck is not installed").unwrap();
            }
            return;
        }
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "sh") {
                let mut out = crate::exec::Cmd::new("shellcheck")
                    .args(["-s", "sh"])
                    .arg(&path)
                    .run()
                    .unwrap();
                let said = out.stdout_string().unwrap();
                assert!(out.success(), "{}:\n{said}", path.display());
                checked += 1;
            }
        }
        assert!(
            checked >= 15,
            "only {checked} scripts found in {}",
            dir.display()
        );
    }

    #[test]
    fn batches_stay_under_the_argv_budget() {
        let items: Vec<String> = (0..5000).map(|i| format!("snapshots/{i:040}")).collect();
        let parts = batches(&items);
        assert!(parts.len() > 1, "one batch for {} bytes", items.len() * 50);
        assert_eq!(parts.iter().map(|p| p.len()).sum::<usize>(), items.len());
        assert!(
            parts
                .iter()
                .all(|p| p.iter().map(|i| i.len() + 3).sum::<usize>() <= ARGV_BYTES + 64)
        );
    }
}
