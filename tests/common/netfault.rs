//! Network partitions for real-process tests: iptables DROP rules between loopback addresses.
//!
//! [`firewall`] finds an iptables that really drops loopback traffic here: it installs the
//! `iptables` package when missing (root only; one install at a time machine-wide), then tries
//! `iptables`, `iptables-legacy` and `iptables-nft` in turn and keeps the first whose rule stops
//! a probe connection. Without root or a working iptables it says why, and a test reports
//! `SKIPPED` through [`firewall_or_skip`] rather than passing silently.
//!
//! Rules go in the OUTPUT chain: a loopback packet crosses OUTPUT once, and dropping A→B stops
//! both connections A opens to B (the SYN) and those B opens to A (the SYN-ACK). Every rule of a
//! [`Partition`] carries the comment `ringkv-test-<pid>-<n>`, unique machine-wide while the
//! process lives, so tests running in parallel only ever remove their own rules.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::LoopbackBlock;

/// Why network faults cannot be injected on this machine.
#[derive(Debug, Clone)]
pub struct Skip(pub String);

/// An iptables command that was seen dropping loopback traffic.
#[derive(Debug, Clone)]
pub struct Firewall {
    cmd: PathBuf,
}

const TAG_PREFIX: &str = "ringkv-test-";

/// The firewall, or why there is none; found (and installed if need be) once per process.
pub async fn firewall() -> Result<Firewall, Skip> {
    static FIREWALL: tokio::sync::OnceCell<Result<Firewall, Skip>> =
        tokio::sync::OnceCell::const_new();
    FIREWALL.get_or_init(find_firewall).await.clone()
}

/// The firewall, or `None` after writing `SKIPPED <test>: <why>` to stderr. The line goes to
/// the stderr descriptor itself, not through `eprintln!`, which the test harness would capture
/// and hide for a passing test.
pub async fn firewall_or_skip(test: &str) -> Option<Firewall> {
    match firewall().await {
        Ok(fw) => Some(fw),
        Err(Skip(why)) => {
            // One write, so the line is not interleaved with the harness's own output.
            let line = format!("\n*** SKIPPED {test}: {why} ***\n\n");
            let _ = std::io::stderr().write_all(line.as_bytes());
            None
        }
    }
}

/// True when a TCP connection from `from` to `to` does not open within 300 ms (something
/// listens on `to`, so only a firewall stops it).
pub async fn blocked(from: IpAddr, to: SocketAddr) -> bool {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    match tokio::time::timeout(Duration::from_millis(300), socket.connect(to)).await {
        Ok(Ok(_)) => false,
        Ok(Err(e)) => panic!("connect {from} -> {to} failed otherwise than by a drop: {e}"),
        Err(_) => true,
    }
}

async fn find_firewall() -> Result<Firewall, Skip> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        return Err(Skip(format!(
            "iptables rules need root and the tests run as uid {uid}"
        )));
    }
    tokio::task::spawn_blocking(ensure_installed)
        .await
        .expect("install task")?;
    let mut tried = Vec::new();
    for name in ["iptables", "iptables-legacy", "iptables-nft"] {
        let Some(cmd) = find_command(name) else {
            continue;
        };
        let fw = Firewall { cmd };
        match fw.probe().await {
            Ok(()) => return Ok(fw),
            Err(why) => tried.push(format!("{}: {why}", fw.cmd.display())),
        }
    }
    Err(Skip(format!(
        "no iptables here drops loopback traffic ({})",
        tried.join("; ")
    )))
}

/// Installs the `iptables` package when no iptables command exists (the caller is root).
fn ensure_installed() -> Result<(), Skip> {
    if find_command("iptables").is_some() {
        return Ok(());
    }
    // Parallel test processes must not run apt at once: the first installs, the rest find it.
    let lock = std::fs::File::create(std::env::temp_dir().join("ringkv-test-apt.lock"))
        .map_err(|e| Skip(format!("cannot create the apt lock file: {e}")))?;
    // SAFETY: flock on a descriptor owned here; it is released when `lock` closes.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    if find_command("iptables").is_some() {
        return Ok(());
    }
    let apt = |args: &[&str]| -> Result<Output, Skip> {
        Command::new("apt-get")
            .args(["-q", "-y", "-o", "DPkg::Lock::Timeout=120"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .map_err(|e| {
                Skip(format!(
                    "iptables is not installed and apt-get cannot run: {e}"
                ))
            })
    };
    let mut out = apt(&["install", "iptables"])?;
    if !out.status.success() {
        // The package lists may be missing or stale (a fresh container).
        apt(&["update"])?;
        out = apt(&["install", "iptables"])?;
    }
    if out.status.success() && find_command("iptables").is_some() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let last: Vec<&str> = err.lines().rev().take(3).collect();
    Err(Skip(format!(
        "iptables is not installed and `apt-get install iptables` failed: {}",
        last.into_iter().rev().collect::<Vec<_>>().join(" / ")
    )))
}

/// `name` on PATH or in the sbin folders (which a non-login PATH may lack).
fn find_command(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn next_tag() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{TAG_PREFIX}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Firewall {
    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(&self.cmd)
            .args(["-w", "30"])
            .args(args)
            .output()
            .map_err(|e| format!("cannot run: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    fn rule(from: IpAddr, to: IpAddr, tag: &str) -> Vec<String> {
        [
            "-s",
            &from.to_string(),
            "-d",
            &to.to_string(),
            "-m",
            "comment",
            "--comment",
            tag,
            "-j",
            "DROP",
        ]
        .map(str::to_string)
        .to_vec()
    }

    fn change(&self, op: &str, rule: &[String]) -> Result<(), String> {
        let mut args = vec![op, "OUTPUT"];
        args.extend(rule.iter().map(String::as_str));
        self.run(&args).map(drop)
    }

    /// Checks that a DROP rule from this command stops a connection that opens without it.
    async fn probe(&self) -> Result<(), String> {
        self.run(&["-S", "OUTPUT"])?;
        let block = LoopbackBlock::reserve();
        let (from, to) = (block.ip(1), block.ip(2));
        let listener = std::net::TcpListener::bind((to, 0)).map_err(|e| e.to_string())?;
        let target = listener.local_addr().map_err(|e| e.to_string())?;
        if blocked(from, target).await {
            return Err(format!("{from} cannot reach {target} even without a rule"));
        }
        let rule = Firewall::rule(from, to, &next_tag());
        self.change("-I", &rule)?;
        let dropped = blocked(from, target).await;
        self.change("-D", &rule)?;
        if !dropped {
            return Err("its DROP rule did not stop a loopback connection".into());
        }
        Ok(())
    }

    /// Removes rules left by test processes that died before removing their own (SIGKILL).
    fn sweep_dead(&self) {
        let Ok(listing) = self.run(&["-S", "OUTPUT"]) else {
            return;
        };
        for line in listing.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            let Some(tag) = words
                .windows(2)
                .find(|w| w[0] == "--comment")
                .map(|w| w[1].trim_matches('"'))
            else {
                continue;
            };
            let pid = tag
                .strip_prefix(TAG_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(pid) = pid
                && pid != std::process::id()
                && !ringkv::launcher::pid_alive(pid)
                && words.first() == Some(&"-A")
            {
                let mut args = vec!["-D"];
                args.extend(words[1..].iter().map(|w| w.trim_matches('"')));
                let _ = self.run(&args);
            }
        }
    }
}

/// DROP rules between every address of each group and every address of the other groups
/// (both directions); addresses in no group are untouched. Removed by [`Partition::heal`] or
/// when dropped.
pub struct Partition {
    fw: Firewall,
    tag: String,
    rules: Vec<Vec<String>>,
}

impl Partition {
    /// Cuts the groups apart; panics (after removing what it added) if a rule cannot be added.
    pub fn cut(fw: &Firewall, groups: &[&[IpAddr]]) -> Partition {
        fw.sweep_dead();
        let tag = next_tag();
        let mut partition = Partition {
            fw: fw.clone(),
            tag: tag.clone(),
            rules: Vec::new(),
        };
        for (i, ga) in groups.iter().enumerate() {
            for gb in &groups[i + 1..] {
                for &a in *ga {
                    for &b in *gb {
                        for (from, to) in [(a, b), (b, a)] {
                            let rule = Firewall::rule(from, to, &tag);
                            if let Err(e) = fw.change("-I", &rule) {
                                panic!("iptables refused a DROP rule {from} -> {to}: {e}");
                            }
                            partition.rules.push(rule);
                        }
                    }
                }
            }
        }
        partition
    }

    /// The comment every rule of this partition carries.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Number of DROP rules in force.
    pub fn rules(&self) -> usize {
        self.rules.len()
    }

    /// Removes exactly this partition's rules; panics if one cannot be removed.
    pub fn heal(mut self) {
        let rules = std::mem::take(&mut self.rules);
        for rule in rules {
            if let Err(e) = self.fw.change("-D", &rule) {
                panic!("cannot remove DROP rule {}: {e}", rule.join(" "));
            }
        }
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        for rule in std::mem::take(&mut self.rules) {
            let _ = self.fw.change("-D", &rule);
        }
    }
}
