//! What an SFTP account allows, learned on first contact and cached in the
//! state dir: a POSIX shell, or single whitelisted commands (`rsync
//! --server`, `sha1sum`), or SFTP only. With a shell the answer costs one
//! round trip (the shell reports the commands it has); without one, one
//! round trip per command tried. Later runs read the cache, and re-probe
//! when the account, its host key or the job's settings changed, or after
//! a run failed on the target (run.rs forgets the cache then).

use sha1::{Digest, Sha1};

use super::Ssh;
use super::ssh::server_words;
use crate::config::{Job, RemoteChecksums, Sftp};
use crate::error::Result;
use crate::exec::Output;
use crate::log;
use crate::state::AccountCapabilities;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub shell: bool,
    pub rsync_server: bool,
    pub sha1sum: bool,
}

impl Capabilities {
    /// For messages: what the account allowed.
    pub fn describe(&self) -> String {
        let mut allowed = Vec::new();
        if self.shell {
            allowed.push("a shell");
        }
        if self.rsync_server && !self.shell {
            allowed.push("rsync --server");
        }
        if self.sha1sum && !self.shell {
            allowed.push("sha1sum");
        }
        match allowed.is_empty() {
            true => "it allows SFTP only".into(),
            false => format!("it allows SFTP and {}", allowed.join(", ")),
        }
    }
}

/// The word a real POSIX shell prints for the probe: only a shell expands
/// `$((6 * 7))`.
const SHELL_ANSWER: &str = "ciphersync-shell:42";
const SHELL_PROBE: &str = "sh -c 'echo \"ciphersync-shell:$((6 * 7))\"; \
     command -v rsync >/dev/null 2>&1 && echo rsync; \
     command -v sha1sum >/dev/null 2>&1 && echo sha1sum; true'";

/// The account's capabilities, and whether they were just probed: from the
/// cache when it was made for this account and host key, else probed (and
/// cached).
pub fn capabilities(job: &Job, sftp: &Sftp, ssh: &Ssh) -> Result<(Capabilities, bool)> {
    let account = account_of(sftp);
    let known_hosts = known_hosts_sha1(sftp);
    if let Some(cached) = AccountCapabilities::read(&job.state_dir)
        .filter(|c| c.account == account && Some(&c.known_hosts) == known_hosts.as_ref())
    {
        let caps = Capabilities {
            shell: cached.shell,
            rsync_server: cached.rsync_server,
            sha1sum: cached.sha1sum,
        };
        return Ok((caps, false));
    }
    let caps = probe(ssh)?;
    if let Some(known_hosts) = known_hosts {
        let cached = AccountCapabilities {
            account,
            known_hosts,
            shell: caps.shell,
            rsync_server: caps.rsync_server,
            sha1sum: caps.sha1sum,
        };
        if let Err(e) = cached.write(&job.state_dir) {
            log::warn(format!("cannot cache what the account allows: {e}"));
        }
    }
    Ok((caps, true))
}

/// Forgets the cached answer: the next run probes again.
pub fn forget_capabilities(state_dir: &std::path::Path) {
    AccountCapabilities::forget(state_dir);
}

fn account_of(sftp: &Sftp) -> String {
    format!(
        "{}@{}:{}:{}",
        sftp.user,
        sftp.host,
        sftp.port,
        sftp.path.display()
    )
}

fn known_hosts_sha1(sftp: &Sftp) -> Option<String> {
    let bytes = std::fs::read(&sftp.known_hosts_file).ok()?;
    Some(crate::checksums::to_hex(&Sha1::digest(&bytes).into()))
}

/// A fallback the user should know about, said on the run that found it.
pub fn say_once(sftp: &Sftp, caps: &Capabilities) {
    if !caps.shell && !caps.sha1sum && sftp.remote_checksums == RemoteChecksums::Auto {
        log::info(format!(
            "{}@{} has no shell ({}): verify reads the files back through the \
             sshfs mount (set target.remote_checksums = \"mount\" to say so in the job)",
            sftp.user,
            sftp.host,
            caps.describe()
        ));
    }
}

fn probe(ssh: &Ssh) -> Result<Capabilities> {
    let mut out = exec(ssh, SHELL_PROBE, "probing the account")?;
    let said = out.stdout_string().unwrap_or_default();
    let mut lines = said.lines().map(str::trim);
    if out.success() && lines.next() == Some(SHELL_ANSWER) {
        let tools: Vec<&str> = lines.collect();
        return Ok(Capabilities {
            shell: true,
            rsync_server: tools.contains(&"rsync"),
            sha1sum: tools.contains(&"sha1sum"),
        });
    }
    log::debug(|| format!("no shell on the account: {}", server_words(&mut out)));
    let answers = |command: &str, word: &str| -> Result<bool> {
        let mut out = exec(ssh, command, "probing the account")?;
        // rsync in server mode prints its version on stderr (stdout is
        // its protocol channel).
        let said = out.stdout_string().unwrap_or_default() + &out.stderr;
        let allowed = out.success() && said.contains(word);
        log::debug(|| format!("`{command}`: {allowed} ({})", server_words(&mut out)));
        Ok(allowed)
    };
    Ok(Capabilities {
        shell: false,
        rsync_server: answers("rsync --server --version", "rsync")?,
        sha1sum: answers("sha1sum --version", "sha1sum")?,
    })
}

/// One command on the account; a refusal is an answer, only ssh's own
/// failure (255: no connection, wrong key) is an error.
fn exec(ssh: &Ssh, command: &str, what: &str) -> Result<Output> {
    let out = ssh.command(command).timeout(super::SHORT_COMMAND).run()?;
    if out.code() == Some(255) {
        return Err(ssh.connection_error(&out.stderr, what));
    }
    Ok(out)
}
