//! A FUSE daemon must not outlive its mount guard. The daemon lives as long
//! as the kernel's mount: when something still uses the mount, the unmount
//! is lazy and the daemon goes on serving, detached, after the helper has
//! exited (seen as a gocryptfs -reverse daemon with parent pid 1, alive
//! long after verify). The guard owns the daemon as its child and ends it.

mod common;

use ciphersync::{config, crypt, mount};
use common::*;
use std::fs;
use std::io::Read;

/// The gocryptfs processes whose command line names `point`.
fn daemons_at(point: &std::path::Path) -> Vec<String> {
    let needle = point.to_string_lossy().into_owned();
    processes()
        .into_iter()
        .filter(|(_, _, comm, cmd)| comm == "gocryptfs" && cmd.contains(&needle))
        .map(|(pid, ppid, _, cmd)| format!("{pid} (ppid {ppid}): {cmd}"))
        .collect()
}

#[test]
fn a_busy_view_is_unmounted_and_its_daemon_ended() {
    if !require_tools("busy_view_daemon_ended", &["gocryptfs", "fusermount3"]) {
        return;
    }
    let job = Job::local("busy-view").build();
    fs::write(job.source.join("held.txt"), "held open while unmounting\n").unwrap();
    let job = config::load(&job.config_file).expect("the harness's job file loads");
    crypt::init(&job).expect("init");
    let point = job.runtime_dir.join("cipher");
    mount::prepare_point(&point).unwrap();

    let view = crypt::mount_reverse(&job, &point, None).expect("mount the view");
    let name = fs::read_dir(&point)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .find(|n| n != "gocryptfs.conf" && n != "gocryptfs.diriv")
        .expect("the view shows the encrypted file");
    // Another process's open file keeps the mount busy: the clean unmount
    // fails and the lazy one detaches it, leaving the daemon serving.
    let mut held = fs::File::open(point.join(name)).unwrap();
    assert_eq!(daemons_at(&point).len(), 1, "one daemon serves the view");

    view.unmount().expect("a busy view still unmounts (lazily)");
    assert!(
        !mount::is_mounted(&point).unwrap(),
        "the view is still mounted at {}",
        point.display()
    );
    // No waiting here: the guard has ended its daemon before returning.
    let left = daemons_at(&point);
    assert!(
        left.is_empty(),
        "the daemon outlived its unmount while a file was held open:\n{}",
        left.join("\n")
    );
    let mut byte = [0u8; 1];
    assert!(
        held.read(&mut byte).is_err(),
        "a read through the detached mount should fail once its daemon is gone"
    );
}
