//! Restore: mount the remote `files/` (sshfs, or the local target as it is),
//! decrypt it with a read-only forward gocryptfs mount, and copy all or some
//! plaintext paths out with rsync into an empty directory.

use std::path::{Component, Path, PathBuf};

use serde_json::json;

use crate::config::{Job, Target};
use crate::crypt;
use crate::error::{Error, IoContext, Kind, Result};
use crate::exec::Cmd;
use crate::remote::{self, FILES};
use crate::run::{Context, Done};
use crate::status::Outcome;
use crate::sync::parse_stats;

pub struct RestoreRequest {
    pub to: PathBuf,
    pub paths: Vec<String>,
}

/// Checks the request before anything is mounted: `--to` must be empty (or
/// missing) and outside the source, the paths relative and inside the tree.
pub fn check_request(job: &Job, request: &RestoreRequest) -> Result<()> {
    let to = absolute(&request.to)?;
    let resolved = resolve_existing_prefix(&to);
    let source = job
        .source
        .canonicalize()
        .unwrap_or_else(|_| job.source.clone());
    if resolved.starts_with(&source) {
        return Err(Error::usage(format!(
            "--to {} lies inside the source {}: restore never writes into the source",
            request.to.display(),
            job.source.display()
        )));
    }
    if let Ok(mut entries) = std::fs::read_dir(&to) {
        if entries.next().is_some() {
            return Err(Error::usage(format!(
                "--to {} is not empty: restore only writes into an empty directory",
                to.display()
            )));
        }
    }
    for path in &request.paths {
        check_relative(path)?;
    }
    Ok(())
}

pub fn restore(ctx: &Context, request: &RestoreRequest) -> Result<Done> {
    let job = ctx.job;
    check_request(job, request)?;
    let to = absolute(&request.to)?;
    crypt::create_private_dir(&to)?;

    let remote = remote::open(job, true, &ctx.runtime("remote"))?;
    let root = remote
        .local_root()
        .expect("restore opens the remote as a path")
        .to_owned();
    let plain_point = ctx.runtime("plain");
    crate::mount::prepare_point(&plain_point)?;
    let plain = crypt::mount_forward(job, &root.join(FILES), &plain_point)?;

    let mut cmd = Cmd::new("rsync").args(["-a", "-H", "--stats", "--no-human-readable"]);
    if matches!(job.target, Target::Sftp(_)) {
        // Owners on the server are the SFTP account's, not the original ones.
        cmd = cmd.args(["--no-owner", "--no-group"]);
    }
    if request.paths.is_empty() {
        cmd = cmd.arg(format!("{}/", plain.point().display()));
    } else {
        cmd = cmd.arg("--relative");
        for path in &request.paths {
            let inside = plain.point().join(path);
            if std::fs::symlink_metadata(&inside).is_err() {
                return Err(Error::usage(format!(
                    "{path} is not in the backup of job {}",
                    job.name
                )));
            }
            // `mount/./path` copies `path` with its parents (rsync --relative).
            cmd = cmd.arg(format!(
                "{}/./{}",
                plain.point().display(),
                path.trim_end_matches('/')
            ));
        }
    }
    let mut out = cmd.arg(format!("{}/", to.display())).run()?;
    let stats = parse_stats(&out.stdout_string()?);
    if !out.success() {
        return Err(out.failure(Some("copying out of the decrypted backup")));
    }
    plain.unmount()?;
    drop(remote);
    Ok(Done {
        outcome: Outcome::Ok,
        stats: json!({ "to": to, "files": stats.transferred, "bytes": stats.bytes_transferred }),
    })
}

fn absolute(path: &Path) -> Result<PathBuf> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    Ok(std::env::current_dir()
        .ctx(|| "reading the current directory")?
        .join(path))
}

/// Canonicalizes the longest existing prefix of `path` (the rest may not
/// exist yet), so symlinked parents cannot hide that `path` is in the source.
fn resolve_existing_prefix(path: &Path) -> PathBuf {
    let mut existing = path.to_owned();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_owned();
            }
            _ => break,
        }
    }
    let mut resolved = existing.canonicalize().unwrap_or(existing);
    for name in rest.iter().rev() {
        resolved.push(name);
    }
    resolved
}

/// A restore path must stay inside the backup: relative, no `..`.
fn check_relative(path: &str) -> Result<()> {
    let p = Path::new(path);
    let bad = path.is_empty()
        || p.is_absolute()
        || p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)));
    if bad {
        return Err(Error::new(
            Kind::Usage,
            format!(
                "restore path {path:?} must be relative to the source and must not contain `..`"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restore_paths_stay_inside() {
        assert!(check_relative("docs/a.txt").is_ok());
        assert!(check_relative("docs/./a.txt").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x"] {
            assert!(check_relative(bad).is_err(), "{bad}");
        }
    }
}
