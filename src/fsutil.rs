//! Local directories the helper trusts with what it writes: the state dir
//! (status, caches, the lock), the runtime dir (ssh_config, control
//! sockets, mount points) and restore's `--to`. A directory another user
//! owns or may write to lets that user plant a symlink or an ssh_config
//! where root will write or read next, so such a directory is refused.

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::Path;

use crate::error::{Error, Kind, Result};

/// Creates `dir` with mode 0700 if it is missing (its parents with the
/// default mode), then checks it as `check_private_dir` does. `what`
/// names the directory in errors (`state_dir`, `--to`).
pub fn ensure_private_dir(dir: &Path, what: &str) -> Result<()> {
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => check_private_dir(dir, what),
        Err(e) => Err(Error::io(
            format!("cannot create {what} {}", dir.display()),
            e,
        )),
    }
}

/// `dir` must be a directory owned by the user running the helper and not
/// writable by group or others. The error names the path and the fix.
pub fn check_private_dir(dir: &Path, what: &str) -> Result<()> {
    let meta = std::fs::metadata(dir)
        .map_err(|e| Error::io(format!("cannot read {what} {}", dir.display()), e))?;
    if !meta.is_dir() {
        return Err(Error::usage(format!(
            "{what} {} is not a directory",
            dir.display()
        )));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(Error::new(
            Kind::Refused,
            format!(
                "{what} {} belongs to uid {}, not to the user running ciphersync (uid {me}): \
                 another user could plant files there; remove it (ciphersync creates it) or `chown {me} {}`",
                dir.display(),
                meta.uid(),
                dir.display()
            ),
        ));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Error::new(
            Kind::Refused,
            format!(
                "{what} {} is writable by group or others (mode {mode:04o}): \
                 another user could plant files there; run `chmod go-w {}`",
                dir.display(),
                dir.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn temp(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cs-fsutil-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_missing_dir_is_created_private() {
        let dir = temp("new").join("a/b");
        ensure_private_dir(&dir, "state_dir").unwrap();
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn a_dir_others_may_write_is_refused_with_the_fix() {
        let dir = temp("open");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let err = ensure_private_dir(&dir, "runtime_dir").unwrap_err();
        assert_eq!(err.kind, Kind::Refused, "{err}");
        assert!(
            err.message.contains("mode 0777") && err.message.contains("chmod go-w"),
            "the error should name the mode and the fix: {err}"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        check_private_dir(&dir, "runtime_dir").expect("0755 is not writable by others");
    }
}
