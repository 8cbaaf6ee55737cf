//! A key on paper (README "Restoring by hand", "with the master key
//! alone"): `key export` prints the job's gocryptfs master key with the
//! commands that read the backup with it alone, and `key check` proves that
//! a key typed back opens the target's `files/`.
//!
//! The key never goes into argv, the environment of a child, a log or
//! status.json: gocryptfs-xray reads the password on stdin (the password
//! file, opened here) and prints the key on stdout, an in-memory file;
//! gocryptfs gets the key with `-masterkey=stdin` from an in-memory file
//! (gocryptfs(1): `-masterkey=KEY` would show it in `ps`).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::config::{Job, Target};
use crate::crypt;
use crate::error::{Error, IoContext, Kind, Result};
use crate::exec::{Cmd, Output};
use crate::limits;
use crate::mount::{self, FsType, Mount};
use crate::run::Context;

/// Hex digits of a gocryptfs master key (32 bytes).
const KEY_HEX_DIGITS: usize = 64;
/// The longest key input read (a key with dashes, spaces and a comment
/// line fits many times over).
const MAX_KEY_INPUT: u64 = 4096;
/// gocryptfs-xray exit codes (internal/exitcodes in gocryptfs' source).
const XRAY_PASSWORD_INCORRECT: i32 = 8;
const XRAY_READ_PASSWORD: i32 = 9;
/// scrypt takes about a second; a hung gocryptfs-xray is stopped.
const DUMP_TIMEOUT: Duration = Duration::from_secs(120);
/// `key check` reads at most this many files (their first bytes) through
/// the decrypted mount, and looks at most at this many entries for them.
const PROBE_FILES: usize = 8;
const PROBE_ENTRIES: usize = 20_000;
const PROBE_BYTES: u64 = 1024 * 1024;
/// EIO: what gocryptfs answers for a block whose authentication fails.
const EIO: i32 = 5;

/// A master key, kept as 64 lowercase hex digits. Debug shows no digit,
/// and the memory is overwritten when it goes.
pub struct MasterKey(Vec<u8>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl Drop for MasterKey {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: a valid, aligned &mut u8; volatile so the write stays.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl MasterKey {
    /// Reads a key as gocryptfs prints it: 64 hex digits, in groups of 8
    /// joined by dashes (`gocryptfs -init`) or not (`gocryptfs-xray`);
    /// spaces and line breaks between them are ignored. The error never
    /// quotes the input: it may be most of a key.
    pub fn parse(text: &str) -> Result<MasterKey> {
        let mut digits = Vec::with_capacity(KEY_HEX_DIGITS);
        let mut other = 0usize;
        for c in text.chars() {
            match c {
                c if c.is_ascii_hexdigit() => digits.push(c.to_ascii_lowercase() as u8),
                '-' => {}
                c if c.is_whitespace() => {}
                _ => other += 1,
            }
        }
        let key = MasterKey(digits);
        if other > 0 || key.0.len() != KEY_HEX_DIGITS {
            return Err(Error::usage(format!(
                "that is not a gocryptfs master key: expected {KEY_HEX_DIGITS} hex digits \
                 (dashes and spaces allowed), found {} hex digits and {other} other characters",
                key.0.len()
            )));
        }
        Ok(key)
    }

    /// The key's 32 bytes (gocrypt.rs derives its keys from them); the
    /// caller wipes them.
    pub fn bytes(&self) -> [u8; 32] {
        crate::checksums::from_hex(&self.0).expect("parse keeps 64 hex digits")
    }

    /// In groups of 8 hex digits joined by dashes, as `gocryptfs -init`
    /// prints it: easier to copy by hand.
    pub fn grouped(&self) -> String {
        self.0
            .chunks(8)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join("-")
    }

    /// The key and a newline in an anonymous in-memory file, rewound: the
    /// stdin of `gocryptfs -masterkey=stdin`.
    fn as_stdin(&self) -> Result<File> {
        let fd = nix::sys::memfd::memfd_create(
            "ciphersync-masterkey",
            nix::sys::memfd::MFdFlags::MFD_CLOEXEC,
        )
        .map_err(|e| Error::new(Kind::Io, format!("cannot create a buffer for the key: {e}")))?;
        let mut file = File::from(fd);
        file.write_all(&self.0)
            .and_then(|_| file.write_all(b"\n"))
            .and_then(|_| file.seek(SeekFrom::Start(0)).map(|_| ()))
            .ctx(|| "writing the key into its buffer")?;
        Ok(file)
    }
}

/// The gocryptfs flags that a mount with `-masterkey` needs for data made
/// with the config `config` (a gocryptfs.conf's text; `what` names it in
/// errors). gocryptfs(1): "Even if a config file exists, it will not be
/// used. All non-standard settings have to be passed on the command line."
/// They are derived from the config's feature flags, never guessed: a flag
/// this code does not know is an error.
pub fn masterkey_flags(config: &str, what: &str) -> Result<Vec<String>> {
    let bad = |why: String| Error::new(Kind::Corrupt, format!("{what}: {why}"));
    let doc: Value =
        serde_json::from_str(config).map_err(|e| bad(format!("not a gocryptfs config ({e})")))?;
    if doc["Version"] != 2 {
        return Err(bad(format!(
            "config version {} (gocryptfs 1.0 and later write 2)",
            doc["Version"]
        )));
    }
    let flags: Vec<&str> = doc["FeatureFlags"]
        .as_array()
        .ok_or_else(|| bad("no FeatureFlags list".into()))?
        .iter()
        .map(|f| {
            f.as_str()
                .ok_or_else(|| bad(format!("feature flag {f} is not a string")))
        })
        .collect::<Result<_>>()?;
    const KNOWN: [&str; 11] = [
        "GCMIV128",
        "HKDF",
        "DirIV",
        "EMENames",
        "LongNames",
        "LongNameMax",
        "Raw64",
        "PlaintextNames",
        "AESSIV",
        "XChaCha20Poly1305",
        "FIDO2",
    ];
    if let Some(unknown) = flags.iter().find(|f| !KNOWN.contains(f)) {
        return Err(bad(format!(
            "feature flag {unknown:?} is unknown to this ciphersync, which cannot tell the \
             gocryptfs -masterkey flags it needs (see gocryptfs(1), -masterkey)"
        )));
    }
    let has = |f: &str| flags.contains(&f);
    if !has("GCMIV128") {
        return Err(bad(
            "made by gocryptfs before 1.0 (no GCMIV128): not supported".into(),
        ));
    }
    let mut out = Vec::new();
    if has("AESSIV") {
        out.push("-aessiv".to_string());
    } else if has("XChaCha20Poly1305") {
        out.push("-xchacha".to_string());
    }
    if has("PlaintextNames") {
        out.push("-plaintextnames".to_string());
    } else {
        if !has("EMENames") {
            return Err(bad(
                "names neither plaintext nor EME-encrypted: not supported".into(),
            ));
        }
        if !has("DirIV") {
            out.push("-deterministic-names".to_string());
        }
        if !has("Raw64") {
            out.push("-raw64=false".to_string());
        }
        if !has("LongNames") {
            out.push("-longnames=false".to_string());
        }
        if has("LongNameMax") {
            match doc["LongNameMax"].as_u64() {
                Some(n @ 62..=255) => out.push(format!("-longnamemax={n}")),
                _ => return Err(bad(format!("LongNameMax {}", doc["LongNameMax"]))),
            }
        }
    }
    if !has("HKDF") {
        out.push("-hkdf=false".to_string());
    }
    Ok(out)
}

/// The job's master key, decrypted from its local gocryptfs config with
/// the password file (on gocryptfs-xray's stdin).
pub fn dump(job: &Job) -> Result<MasterKey> {
    crypt::require_config(job)?;
    crypt::check_password_file(job)?;
    let password = File::open(&job.password_file)
        .ctx(|| format!("opening the password file {}", job.password_file.display()))?;
    let mut out = Cmd::new("gocryptfs-xray")
        .arg("-dumpmasterkey")
        .arg("--")
        .arg(&job.gocryptfs_config)
        .stdin(password)
        .timeout(DUMP_TIMEOUT)
        .run()?;
    if !out.success() {
        return Err(dump_failure(job, &out));
    }
    let text = out.stdout_string()?;
    MasterKey::parse(&text).map_err(|_| {
        Error::new(
            Kind::Tool,
            "gocryptfs-xray -dumpmasterkey printed no master key (expected 64 hex digits)",
        )
    })
}

fn dump_failure(job: &Job, out: &Output) -> Error {
    let pass = job.password_file.display();
    let conf = job.gocryptfs_config.display();
    match out.code() {
        Some(XRAY_PASSWORD_INCORRECT) => Error::new(
            Kind::Password,
            format!(
                "wrong password for job {}: {pass} does not unlock {conf}",
                job.name
            ),
        ),
        Some(XRAY_READ_PASSWORD) => Error::new(
            Kind::Password,
            format!(
                "job {}: gocryptfs-xray cannot read a password from {pass}: {}",
                job.name,
                out.stderr.trim()
            ),
        ),
        _ => out.failure(Some("decrypting the master key")),
    }
}

/// `key export`: the key, the flags and the commands that read `files/`
/// and a snapshot dir with the key alone (as JSON; human.rs words it).
pub fn export(job: &Job) -> Result<Value> {
    let text = read_local_config(job)?;
    let flags = masterkey_flags(&text, &job.gocryptfs_config.display().to_string())?;
    let key = dump(job)?;
    let (mount_remote, remote) = match &job.target {
        Target::Local { path } => (None, crate::exec::shell_quote(&path.to_string_lossy())),
        Target::Sftp(s) => (Some(sshfs_line(s)), "/mnt/remote".to_string()),
    };
    let gocryptfs = |dir: &str| {
        let mut words = vec!["gocryptfs".to_string(), "-ro".to_string()];
        words.extend(flags.iter().cloned());
        words.push("-masterkey=stdin".into());
        words.push(format!("{remote}/{dir}"));
        words.push("/mnt/plain".into());
        words.join(" ")
    };
    Ok(json!({
        "job": job.name,
        "master_key": key.grouped(),
        "gocryptfs_config": job.gocryptfs_config,
        "gocryptfs_flags": flags,
        "mount_remote": mount_remote,
        "read_files": gocryptfs("files"),
        "read_snapshot": gocryptfs("snapshots/ID"),
    }))
}

/// The README's sshfs line (Restoring by hand) for this target.
fn sshfs_line(s: &crate::config::Sftp) -> String {
    let mut options = vec!["ro".to_string()];
    if let Some(key) = &s.identity_file {
        options.push(format!("IdentityFile={}", key.display()));
        options.push("IdentitiesOnly=yes".into());
    }
    options.push(format!(
        "UserKnownHostsFile={}",
        s.known_hosts_file.display()
    ));
    options.push("StrictHostKeyChecking=yes".into());
    let host = match s.host.contains(':') && !s.host.starts_with('[') {
        true => format!("[{}]", s.host),
        false => s.host.clone(),
    };
    let q = crate::exec::shell_quote;
    format!(
        "sshfs -p {} -o {} {} /mnt/remote",
        s.port,
        q(&options.join(",")),
        q(&format!("{}@{host}:{}", s.user, s.path.display()))
    )
}

/// The job's local gocryptfs config, bounded; an error where it is missing.
pub(crate) fn read_local_config(job: &Job) -> Result<String> {
    crypt::require_config(job)?;
    let file = File::open(&job.gocryptfs_config)
        .ctx(|| format!("opening {}", job.gocryptfs_config.display()))?;
    limits::read_text(
        file,
        limits::MAX_SMALL_FILE,
        &job.gocryptfs_config.display().to_string(),
    )
}

/// The key for `key check`: from `from`, else from stdin (typed, with the
/// terminal's echo off).
pub fn read_key(from: Option<&Path>) -> Result<MasterKey> {
    let text = match from {
        Some(path) => {
            let file = File::open(path).ctx(|| format!("opening {}", path.display()))?;
            limits::read_text(file, MAX_KEY_INPUT, &path.display().to_string())?
        }
        None => read_stdin_key()?,
    };
    MasterKey::parse(&text)
}

fn read_stdin_key() -> Result<String> {
    use nix::sys::termios::{self, LocalFlags, SetArg};
    let stdin = std::io::stdin();
    let tty = nix::unistd::isatty(&stdin).unwrap_or(false);
    if !tty {
        return limits::read_text(stdin.lock(), MAX_KEY_INPUT, "the key on stdin");
    }
    eprint!("master key (input hidden): ");
    let saved = termios::tcgetattr(&stdin).ok();
    if let Some(saved) = &saved {
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        let _ = termios::tcsetattr(&stdin, SetArg::TCSAFLUSH, &quiet);
    }
    let mut line = String::new();
    let read = std::io::BufRead::read_line(&mut stdin.lock(), &mut line);
    if let Some(saved) = &saved {
        let _ = termios::tcsetattr(&stdin, SetArg::TCSAFLUSH, saved);
    }
    eprintln!();
    read.ctx(|| "reading the key from the terminal")?;
    Ok(line)
}

/// `key check`: mounts the target's `files/` read-only with the key alone
/// and proves that it opens it. gocryptfs mounts with any key (it has no
/// config to check one against); a wrong key shows up as names that do not
/// decrypt and blocks that fail authentication (EIO). So the proof is
/// reading files through the mount: every block gocryptfs returns passed
/// AES-SIV (or GCM) authentication under this key. Files that the source
/// still has with the same size and mtime are also compared with it.
pub fn check(ctx: &Context, key: &MasterKey) -> Result<Value> {
    let job = ctx.job;
    use crate::target::Target as _;
    let remote = crate::target::open_path(job, &ctx.runtime("remote"))?;
    let root = remote.root().to_owned();
    let files = root.join("files");
    let (config, flags_from) = match job.gocryptfs_config.exists() {
        true => (
            read_local_config(job)?,
            job.gocryptfs_config.display().to_string(),
        ),
        false => {
            let rel = format!("files/{}", crypt::REMOTE_CONFIG_NAME);
            match remote.read_file(&rel, limits::MAX_SMALL_FILE)? {
                Some(bytes) => (String::from_utf8_lossy(&bytes).into_owned(), rel),
                None => {
                    return Err(Error::new(
                        Kind::Usage,
                        format!(
                            "job {}: neither {} nor the target's {rel} exists: nothing says \
                             which gocryptfs flags the data needs",
                            job.name,
                            job.gocryptfs_config.display()
                        ),
                    ));
                }
            }
        }
    };
    let flags = masterkey_flags(&config, &flags_from)?;
    if !has_content(&files)? {
        return Err(Error::new(
            Kind::Refused,
            format!(
                "job {}: {} holds no file with content, so no key can be proven on it: \
                 run a backup first",
                job.name,
                files.display()
            ),
        ));
    }
    let point = ctx.runtime("plain");
    mount::prepare_point(&point)?;
    let plain = mount_with_key(&files, &point, &flags, key)?;
    let probe = probe(plain.point(), &job.source)?;
    plain.unmount()?;
    drop(remote);
    if probe.read == 0 {
        let why = match probe.tried {
            0 => "no file name in it decrypts with this key".to_string(),
            n => format!(
                "{} failed authentication ({})",
                crate::human::count(n, "file read", "file reads"),
                crate::human::count(probe.names, "name", "names")
            ),
        };
        return Err(Error::new(
            Kind::Password,
            format!(
                "job {}: this master key does not open the backup in {}/files: {why}",
                job.name,
                job.target_label(),
            ),
        ));
    }
    Ok(json!({
        "job": job.name,
        "ok": true,
        "target": job.target_label(),
        "gocryptfs_flags": flags,
        "flags_from": flags_from,
        "names": probe.names,
        "files_read": probe.read,
        "unreadable": probe.unreadable,
        "equal_to_source": probe.equal,
        "differ_from_source": probe.differ,
    }))
}

fn mount_with_key(
    cipher_dir: &Path,
    point: &Path,
    flags: &[String],
    key: &MasterKey,
) -> Result<Mount> {
    let cmd = Cmd::new("gocryptfs")
        .args(["-ro", "-fg", "-q", "-nosyslog"])
        .args(flags)
        .arg("-masterkey=stdin")
        .stdin(key.as_stdin()?)
        .arg("--")
        .arg(cipher_dir)
        .arg(point);
    Mount::establish(point, FsType::Gocryptfs, cmd, |out| {
        out.failure(Some("mounting files/ with the master key"))
    })
}

/// Is there a non-empty regular file of the user's in the raw `files/`
/// (an empty one has no block to authenticate)?
fn has_content(files: &Path) -> Result<bool> {
    for entry in crate::walk::sorted(files).take(PROBE_ENTRIES) {
        let entry = entry.map_err(|e| crate::walk::error(files, e))?;
        let rel = crate::walk::relative(files, entry.path());
        if entry.file_type().is_file()
            && !crypt::is_gocryptfs_metadata(&rel)
            && entry.metadata().is_ok_and(|m| m.len() > 0)
        {
            return Ok(true);
        }
    }
    Ok(false)
}

#[derive(Default)]
struct Probe {
    names: u64,
    tried: u64,
    read: u64,
    unreadable: u64,
    equal: u64,
    differ: u64,
}

/// Lists the decrypted mount (up to PROBE_ENTRIES entries) and reads the
/// first bytes of up to PROBE_FILES files, those the source still has with
/// the same size and mtime first, comparing them with the source.
fn probe(plain: &Path, source: &Path) -> Result<Probe> {
    use std::os::unix::fs::MetadataExt;
    let mut probe = Probe::default();
    let mut same_in_source = Vec::new();
    let mut others = Vec::new();
    for entry in crate::walk::sorted(plain).take(PROBE_ENTRIES) {
        let entry = entry.map_err(|e| crate::walk::error(plain, e))?;
        probe.names += 1;
        let Ok(meta) = entry.metadata() else { continue };
        if !entry.file_type().is_file() || meta.len() == 0 {
            continue;
        }
        let rel = PathBuf::from(crate::walk::relative(plain, entry.path()));
        let unchanged = std::fs::symlink_metadata(source.join(&rel))
            .is_ok_and(|s| s.is_file() && s.len() == meta.len() && s.mtime() == meta.mtime());
        match unchanged {
            true if same_in_source.len() < PROBE_FILES => same_in_source.push(rel),
            false if others.len() < PROBE_FILES => others.push(rel),
            _ => {}
        }
    }
    let chosen = same_in_source.iter().map(|r| (r, true));
    let chosen = chosen
        .chain(others.iter().map(|r| (r, false)))
        .take(PROBE_FILES);
    for (rel, compare) in chosen {
        probe.tried += 1;
        let decrypted = match read_prefix(&plain.join(rel)) {
            Ok(bytes) => bytes,
            Err(e) if e.raw_os_error() == Some(EIO) => {
                probe.unreadable += 1;
                continue;
            }
            Err(e) => {
                return Err(Error::io(
                    format!(
                        "reading {} through the decrypted mount",
                        plain.join(rel).display()
                    ),
                    e,
                ));
            }
        };
        probe.read += 1;
        if compare {
            match read_prefix(&source.join(rel)) {
                Ok(original) if original == decrypted => probe.equal += 1,
                _ => probe.differ += 1,
            }
        }
    }
    Ok(probe)
}

/// The first PROBE_BYTES of a file, opened without following a link.
fn read_prefix(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)?;
    let mut bytes = Vec::new();
    file.take(PROBE_BYTES).read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(flags: &[&str], extra: &str) -> String {
        format!(
            r#"{{"Version": 2, "FeatureFlags": {}{extra}}}"#,
            serde_json::to_string(flags).unwrap()
        )
    }

    #[test]
    fn flags_follow_the_feature_flags_gocryptfs_writes() {
        // As gocryptfs 2.3 writes them for `-init -reverse` with each
        // `filenames` choice.
        let encrypted = [
            "HKDF",
            "GCMIV128",
            "DirIV",
            "EMENames",
            "LongNames",
            "Raw64",
            "AESSIV",
        ];
        assert_eq!(
            masterkey_flags(&config(&encrypted, ""), "c").unwrap(),
            ["-aessiv"]
        );
        let deterministic = [
            "HKDF",
            "GCMIV128",
            "EMENames",
            "LongNames",
            "Raw64",
            "AESSIV",
        ];
        assert_eq!(
            masterkey_flags(&config(&deterministic, ""), "c").unwrap(),
            ["-aessiv", "-deterministic-names"]
        );
        let plaintext = ["HKDF", "GCMIV128", "PlaintextNames", "AESSIV"];
        assert_eq!(
            masterkey_flags(&config(&plaintext, ""), "c").unwrap(),
            ["-aessiv", "-plaintextnames"]
        );
        // Older defaults and -longnamemax.
        let old = [
            "GCMIV128",
            "DirIV",
            "EMENames",
            "LongNames",
            "LongNameMax",
            "AESSIV",
        ];
        assert_eq!(
            masterkey_flags(&config(&old, r#", "LongNameMax": 100"#), "c").unwrap(),
            ["-aessiv", "-raw64=false", "-longnamemax=100", "-hkdf=false"]
        );
    }

    #[test]
    fn unknown_or_ancient_configs_are_refused_by_name() {
        let e = masterkey_flags(&config(&["GCMIV128", "Quantum"], ""), "conf").unwrap_err();
        assert!(
            e.message.starts_with("conf: ") && e.message.contains("\"Quantum\""),
            "{}",
            e.message
        );
        let e = masterkey_flags(&config(&["DirIV", "EMENames"], ""), "conf").unwrap_err();
        assert!(e.message.contains("GCMIV128"), "{}", e.message);
        let e = masterkey_flags("{\"Version\": 2}", "conf").unwrap_err();
        assert!(e.message.contains("FeatureFlags"), "{}", e.message);
        assert!(masterkey_flags("not json", "conf").is_err());
    }

    #[test]
    fn keys_parse_in_both_printed_forms_and_errors_hide_them() {
        let plain = "b47e721d838e477b2ea04f9020af868692fce05736d4b6f25b4565c94d654234";
        let grouped = "b47e721d-838e477b-2ea04f90-20af8686-92fce057-36d4b6f2-5b4565c9-4d654234";
        assert_eq!(
            MasterKey::parse(&format!("{plain}\n")).unwrap().grouped(),
            grouped
        );
        assert_eq!(
            MasterKey::parse(&format!("  {}\n", grouped.to_uppercase()))
                .unwrap()
                .grouped(),
            grouped
        );
        for bad in [
            &plain[1..],
            &format!("{plain}0")[..],
            &format!("{plain}#")[..],
            "",
        ] {
            let e = MasterKey::parse(bad).unwrap_err();
            assert_eq!(e.kind, Kind::Usage);
            assert!(!e.message.contains(&plain[..8]), "{}", e.message);
        }
        assert_eq!(
            format!("{:?}", MasterKey::parse(plain).unwrap()),
            "MasterKey(..)"
        );
    }

    #[test]
    fn the_key_reaches_gocryptfs_on_stdin_not_argv() {
        let key = MasterKey::parse(&"ab".repeat(32)).unwrap();
        let mut input = String::new();
        key.as_stdin().unwrap().read_to_string(&mut input).unwrap();
        assert_eq!(input, format!("{}\n", "ab".repeat(32)));
    }

    #[test]
    fn sshfs_line_is_the_readme_one() {
        let s = crate::config::Sftp {
            host: "backup.example.org".into(),
            port: 22,
            user: "docs".into(),
            path: "/backups/docs".into(),
            identity_file: Some("/var/lib/ciphersync/docs/id_ed25519".into()),
            known_hosts_file: "/etc/ciphersync/known_hosts".into(),
            transport: crate::config::Transport::Sshfs,
            remote_checksums: crate::config::RemoteChecksums::Ssh,
            connections: 4,
            max_connections: crate::budget::DEFAULT,
        };
        assert_eq!(
            sshfs_line(&s),
            "sshfs -p 22 -o ro,IdentityFile=/var/lib/ciphersync/docs/id_ed25519,IdentitiesOnly=yes,\
             UserKnownHostsFile=/etc/ciphersync/known_hosts,StrictHostKeyChecking=yes \
             docs@backup.example.org:/backups/docs /mnt/remote"
        );
    }
}
