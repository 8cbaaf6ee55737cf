//! What an SFTP account allows, learned on first contact and cached in the
//! state dir: a POSIX shell, or a ciphersync server (`ciphersync serve`:
//! SFTP, `rsync --server` and its own queries), or single whitelisted
//! commands (`rsync --server`, `sha1sum`), or SFTP only. With a shell the
//! answer costs one round trip (the shell reports the commands it has); a
//! ciphersync server one more (`ciphersync-server info` says what it
//! serves); otherwise one round trip per command tried. Later runs read the cache, and re-probe
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
    /// `ciphersync serve`: it also answers `ciphersync-server sha1 DIR`
    /// (the whole tree's sums in one round trip).
    pub ciphersync_server: bool,
}

impl Capabilities {
    /// For messages: what the account allowed.
    pub fn describe(&self) -> String {
        if self.ciphersync_server {
            return match self.rsync_server {
                true => {
                    "it is a ciphersync server: SFTP, rsync --server, server-side checksums".into()
                }
                false => {
                    "it is a ciphersync server without rsync: SFTP, server-side checksums".into()
                }
            };
        }
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
            ciphersync_server: cached.ciphersync_server,
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
            ciphersync_server: caps.ciphersync_server,
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
            ciphersync_server: false,
        });
    }
    log::debug(|| format!("no shell on the account: {}", server_words(&mut out)));
    // The three questions left are asked side by side: each is a session
    // over the one connection, a round trip or two that a first backup to
    // an SFTP-only account waited for in turn (the two tools' answers are
    // not needed where a ciphersync server answers).
    let (server, (rsync, sha1sum)) = crate::pool::join(
        || exec(ssh, SERVER_PROBE, "probing the account"),
        || {
            crate::pool::both(
                || answers(ssh, "rsync --server --version", "rsync"),
                || answers(ssh, "sha1sum --version", "sha1sum"),
            )
        },
    );
    let mut out = server.unwrap_or_else(|_| {
        Err(crate::error::Error::new(
            crate::error::Kind::Io,
            "a probe of the account panicked",
        ))
    })?;
    let said = out.stdout_string().unwrap_or_default();
    if out.success()
        && let Some(caps) = server_info(&said)
    {
        log::debug(|| format!("`{SERVER_PROBE}`: a ciphersync server ({caps:?})"));
        return Ok(caps);
    }
    log::debug(|| {
        format!(
            "`{SERVER_PROBE}`: not a ciphersync server ({})",
            server_words(&mut out)
        )
    });
    Ok(Capabilities {
        shell: false,
        rsync_server: rsync?,
        sha1sum: sha1sum?,
        ciphersync_server: false,
    })
}

/// Whether `command` succeeds and says `word`.
fn answers(ssh: &Ssh, command: &str, word: &str) -> Result<bool> {
    let mut out = exec(ssh, command, "probing the account")?;
    // rsync in server mode prints its version on stderr (stdout is its
    // protocol channel).
    let said = out.stdout_string().unwrap_or_default() + &out.stderr;
    let allowed = out.success() && said.contains(word);
    log::debug(|| format!("`{command}`: {allowed} ({})", server_words(&mut out)));
    Ok(allowed)
}

/// The question only `ciphersync serve` answers (a storage box refuses it,
/// a shell finds no such command).
const SERVER_PROBE: &str = "ciphersync-server info";

/// What `ciphersync-server info` said, if it is a ciphersync server's
/// answer: `ciphersync-server 1` first, then `key value` lines (`rsync
/// no` when the server has no rsync). The server's words are not trusted
/// beyond choosing among the client's own ways: every answer is checked
/// where it is used.
fn server_info(said: &str) -> Option<Capabilities> {
    let mut lines = said.lines().map(str::trim);
    if lines.next() != Some("ciphersync-server 1") {
        return None;
    }
    let rsync = !lines.any(|l| l == "rsync no");
    Some(Capabilities {
        shell: false,
        rsync_server: rsync,
        sha1sum: true,
        ciphersync_server: true,
    })
}

/// One command on the account; a refusal is an answer, only ssh's own
/// failure (255: no connection, wrong key) is an error.
fn exec(ssh: &Ssh, command: &str, what: &str) -> Result<Output> {
    let out = ssh.exec(ssh.command(command).timeout(super::SHORT_COMMAND))?;
    if out.code() == Some(255) {
        return Err(ssh.connection_error(&out.stderr, what));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_ciphersync_servers_answer_makes_one() {
        let caps = server_info("ciphersync-server 1\nrsync yes\nappend-only no\n").unwrap();
        assert!(caps.ciphersync_server && caps.rsync_server && caps.sha1sum && !caps.shell);
        let caps = server_info("ciphersync-server 1\nrsync no\n").unwrap();
        assert!(caps.ciphersync_server && !caps.rsync_server);
        for other in [
            "",
            "ciphersync-server 2\n",
            "sh: ciphersync-server: not found\n",
            "x\nciphersync-server 1\n",
        ] {
            assert_eq!(server_info(other), None, "{other:?}");
        }
    }
}
