//! The SFTP server as its own host: a network namespace with a veth pair
//! (10.213.X.0/30; the host end 10.213.X.1 in the root namespace, the server
//! 10.213.X.2 inside), an sshd started inside it (`nsenter --net`, see start_sshd), and the remote
//! directory on a size-limited tmpfs of its own. Everything is torn down in
//! Drop (also when the test panics).
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

static N: AtomicU32 = AtomicU32::new(0);

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {args:?}: {e}"))
}

fn must(args: &[&str]) {
    let o = sh(args);
    assert!(
        o.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

pub struct NetServer {
    pub ns: String,
    pub veth_host: String,
    pub veth_ns: String,
    pub host_ip: String,
    pub server_ip: String,
    /// sshd's files (keys, config, log).
    pub dir: PathBuf,
    /// The tmpfs mount point; `remote` lies inside it.
    pub disk: PathBuf,
    /// target.path
    pub remote: PathBuf,
    pub client_key: PathBuf,
    pub known_hosts: PathBuf,
    pub log: PathBuf,
    sshd: Option<Child>,
    up: bool,
}

fn keygen(path: &Path) {
    must(&[
        "ssh-keygen",
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "cs-faults",
        "-f",
        path.to_str().unwrap(),
    ]);
}

/// Is `ip netns` usable here (root, iproute2)?
pub fn available() -> bool {
    Path::new("/usr/sbin/ip").exists()
        || Path::new("/sbin/ip").exists()
        || Path::new("/usr/bin/ip").exists()
}

impl NetServer {
    /// `base` is the test's temp dir; `disk_mb` the tmpfs size.
    pub fn start(base: &Path, disk_mb: u32) -> NetServer {
        let n = N.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        // X in 1..=250 from pid and counter; collisions with another live
        // namespace are checked below.
        let mut x = ((pid.wrapping_mul(7) + n * 13) % 250) + 1;
        let existing = String::from_utf8_lossy(&sh(&["ip", "-4", "addr"]).stdout).into_owned();
        while existing.contains(&format!("10.213.{x}.")) {
            x = x % 250 + 1;
        }
        let ns = format!("csf-{pid}-{n}");
        let tag = format!("{:x}{n}", pid % 0xfffff);
        let veth_host = format!("csh{tag}");
        let veth_ns = format!("csn{tag}");
        let host_ip = format!("10.213.{x}.1");
        let server_ip = format!("10.213.{x}.2");
        let dir = base.join("netsshd");
        // Outside the job's temp dir: the leak checks look for mounts there.
        let disk = std::env::temp_dir().join(format!("csf-disk-{pid}-{n}"));
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all(&disk).unwrap();
        let mut s = NetServer {
            ns: ns.clone(),
            veth_host: veth_host.clone(),
            veth_ns: veth_ns.clone(),
            host_ip: host_ip.clone(),
            server_ip: server_ip.clone(),
            dir: dir.clone(),
            disk: disk.clone(),
            remote: disk.join("backup"),
            client_key: dir.join("client_ed25519"),
            known_hosts: dir.join("known_hosts"),
            log: dir.join("sshd.log"),
            sshd: None,
            up: false,
        };
        // From here on Drop tears down whatever exists.
        must(&["ip", "netns", "add", &ns]);
        s.up = true;
        must(&[
            "ip", "link", "add", &veth_host, "type", "veth", "peer", "name", &veth_ns,
        ]);
        must(&["ip", "link", "set", &veth_ns, "netns", &ns]);
        must(&[
            "ip",
            "addr",
            "add",
            &format!("{host_ip}/30"),
            "dev",
            &veth_host,
        ]);
        must(&["ip", "link", "set", &veth_host, "up"]);
        must(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{server_ip}/30"),
            "dev",
            &veth_ns,
        ]);
        must(&["ip", "-n", &ns, "link", "set", &veth_ns, "up"]);
        must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        must(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            &format!("size={disk_mb}m,mode=0755"),
            "cs-faults-disk",
            disk.to_str().unwrap(),
        ]);
        fs::create_dir_all(&s.remote).unwrap();
        keygen(&dir.join("host_ed25519"));
        keygen(&s.client_key);
        fs::copy(dir.join("client_ed25519.pub"), dir.join("authorized_keys")).unwrap();
        fs::write(
            dir.join("sshd_config"),
            format!(
                "Port 22\nListenAddress {server_ip}\nHostKey {hk}\nAuthorizedKeysFile {auth}\n\
                 PidFile {pidf}\nUsePAM no\nStrictModes no\nPermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 Subsystem sftp internal-sftp\nLogLevel ERROR\n",
                hk = dir.join("host_ed25519").display(),
                auth = dir.join("authorized_keys").display(),
                pidf = dir.join("sshd.pid").display(),
            ),
        )
        .unwrap();
        let pubkey = fs::read_to_string(dir.join("host_ed25519.pub")).unwrap();
        let mut parts = pubkey.split_whitespace();
        fs::write(
            &s.known_hosts,
            format!(
                "{server_ip} {} {}\n",
                parts.next().unwrap(),
                parts.next().unwrap()
            ),
        )
        .unwrap();
        fs::create_dir_all("/run/sshd").unwrap();
        s.start_sshd();
        s
    }

    /// (Re)starts sshd inside the namespace and waits for its banner.
    pub fn start_sshd(&mut self) {
        let logf = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        // nsenter --net joins only the network namespace. (`ip netns exec`
        // would also unshare the mount namespace, and the copy it makes of
        // every mount present at that moment -- other runs' FUSE mounts
        // included -- would pin those mounts and keep their daemons alive
        // after they are unmounted here.)
        let child = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.ns))
            .args(["/usr/sbin/sshd", "-D", "-e", "-f"])
            .arg(self.dir.join("sshd_config"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn sshd in the namespace");
        self.sshd = Some(child);
        // Generous: sshd is slow to start on a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut st) = std::net::TcpStream::connect_timeout(
                &format!("{}:22", self.server_ip).parse().unwrap(),
                Duration::from_millis(500),
            ) {
                use std::io::Read;
                let _ = st.set_read_timeout(Some(Duration::from_secs(2)));
                let mut b = [0u8; 8];
                if st
                    .read(&mut b)
                    .map(|n| b[..n].starts_with(b"SSH-"))
                    .unwrap_or(false)
                {
                    return;
                }
            }
            if let Some(c) = self.sshd.as_mut()
                && let Ok(Some(st)) = c.try_wait()
            {
                panic!(
                    "sshd in {} exited: {st}\n{}",
                    self.ns,
                    fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                panic!("sshd in {} did not answer", self.ns);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pids of every process inside the namespace (sshd and its children).
    pub fn pids(&self) -> Vec<u32> {
        String::from_utf8_lossy(&sh(&["ip", "netns", "pids", &self.ns]).stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// kill -9 sshd and every session it forked (the server "crashes").
    pub fn kill_sshd(&mut self) {
        for p in self.pids() {
            let _ = sh(&["kill", "-9", &p.to_string()]);
        }
        if let Some(mut c) = self.sshd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Cuts the cable: the server side of the veth goes down, packets to
    /// the server vanish (no RST, no ICMP) as on a dead link.
    pub fn link_down(&self) {
        must(&["ip", "-n", &self.ns, "link", "set", &self.veth_ns, "down"]);
    }
    /// Puts the cable back, and waits until the server answers on it: the
    /// host may still hold a failed neighbour entry from the cut, which
    /// gives "No route to host" for a moment however fast the machine is.
    pub fn link_up(&self) {
        must(&["ip", "-n", &self.ns, "link", "set", &self.veth_ns, "up"]);
        let addr: std::net::SocketAddr = format!("{}:22", self.server_ip).parse().unwrap();
        crate::common::wait_until(
            "the server to answer after the link is back",
            std::time::Duration::from_secs(60),
            || {
                std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
                    .is_ok()
            },
        );
    }

    /// The server's disk read-only / read-write.
    pub fn disk_readonly(&self, ro: bool) {
        let opt = if ro { "remount,ro" } else { "remount,rw" };
        must(&["mount", "-o", opt, self.disk.to_str().unwrap()]);
    }
}

impl Drop for NetServer {
    fn drop(&mut self) {
        if !self.up {
            return;
        }
        self.kill_sshd();
        let _ = sh(&["ip", "link", "del", &self.veth_host]);
        let _ = sh(&["ip", "netns", "del", &self.ns]);
        // Lazily: a hung sshfs could still hold it (the job's TempDir drop
        // unmounts FUSE leftovers after this).
        let _ = sh(&["umount", "-l", self.disk.to_str().unwrap()]);
        let _ = fs::remove_dir_all(&self.disk);
    }
}
