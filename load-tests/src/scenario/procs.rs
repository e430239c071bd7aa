//! The processes a scenario runs: the `estate` binary in its roles, the
//! tansu broker, and the network namespace a partitioned poller lives in.
//! Every child writes its log to a file of the run directory, and is killed
//! when the runner drops it.

use std::fs::OpenOptions;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// Log filter for the children: enough to diagnose a failed run.
const CHILD_LOG: &str = "info,buoyant_kernel=warn,deltalake_core=warn,deltalake=warn,librdkafka=warn,datafusion=warn";

/// A free TCP port on `ip`.
pub fn free_port(ip: &str) -> Result<u16> {
    let l = TcpListener::bind((ip, 0)).map_err(|e| Error::Config(format!("no free port on {ip}: {e}")))?;
    Ok(l.local_addr().map_err(|e| Error::Config(format!("port: {e}")))?.port())
}

/// One child process that can be killed and started again with the same
/// command line (same ports, same directories).
#[derive(Debug)]
pub struct Proc {
    /// Name in logs and reports (`ingest-1`, `tansu`, …).
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    cwd: Option<PathBuf>,
    /// The log file (appended to across restarts).
    pub log: PathBuf,
    child: Option<Child>,
    /// How often it was started.
    pub starts: u32,
}

impl Proc {
    /// A process description; nothing runs until [`Proc::start`].
    pub fn new(name: &str, program: &Path, args: Vec<String>, log_dir: &Path) -> Proc {
        Proc { name: name.to_owned(), program: program.to_owned(), args, cwd: None, log: log_dir.join(format!("{name}.log")), child: None, starts: 0 }
    }

    /// Runs it inside `dir`.
    pub fn in_dir(mut self, dir: &Path) -> Proc {
        self.cwd = Some(dir.to_owned());
        self
    }

    /// Runs it inside the network namespace `ns` (through `ip netns exec`,
    /// which execs the command, so the pid is the command's own).
    pub fn in_netns(mut self, ns: &str) -> Proc {
        let mut args = vec!["netns".to_owned(), "exec".to_owned(), ns.to_owned(), self.program.display().to_string()];
        args.append(&mut self.args);
        self.program = PathBuf::from("ip");
        self.args = args;
        self
    }

    /// Replaces one argument value (`--flag value`), or appends the pair.
    pub fn set_arg(&mut self, flag: &str, value: Option<&str>) {
        if let Some(i) = self.args.iter().position(|a| a == flag) {
            self.args.drain(i..(i + 2).min(self.args.len()));
        }
        if let Some(v) = value {
            self.args.extend([flag.to_owned(), v.to_owned()]);
        }
    }

    /// Starts it (it must not be running).
    pub fn start(&mut self) -> Result<()> {
        let log = OpenOptions::new().create(true).append(true).open(&self.log).map_err(Error::io("opening log", &self.log))?;
        let err = log.try_clone().map_err(Error::io("opening log", &self.log))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args).env("ESTATE_LOG", std::env::var("ESTATE_SCENARIO_LOG").unwrap_or_else(|_| CHILD_LOG.into()));
        cmd.env_remove("RUST_BACKTRACE").stdin(Stdio::null()).stdout(log).stderr(err);
        if let Some(d) = &self.cwd {
            cmd.current_dir(d);
        }
        let child = cmd.spawn().map_err(Error::io("starting", &self.program))?;
        self.child = Some(child);
        self.starts += 1;
        Ok(())
    }

    /// Its pid while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it has exited (reaping it), with its status.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`. Returns the exit status of a
    /// process that stopped on its own within `grace`.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(s)) = c.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!(process = %self.name, ?grace, "did not stop after SIGTERM; killing it");
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Resident set size in bytes, from `/proc`.
    pub fn rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `ip:port` accepts TCP connections.
pub fn wait_port(ip: &str, port: u16, timeout: Duration, what: &str) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().map_err(|e| Error::Config(format!("{ip}:{port}: {e}")))?;
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err() {
        if Instant::now() >= deadline {
            return Err(Error::Config(format!("{what} did not accept connections on {addr} within {timeout:?}")));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Where the tansu binary is, or an error naming the install command.
pub fn find_tansu(given: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_owned());
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let mut cands = vec![PathBuf::from(&home).join(".cargo/bin/tansu")];
    if let Some(path) = std::env::var_os("PATH") {
        cands.extend(std::env::split_paths(&path).map(|d| d.join("tansu")));
    }
    cands.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        Error::Config(
            "the tansu broker is not installed; scenarios need it. Install it with scripts/install-test-deps.sh \
             (cargo install tansu --version 0.6.0 --locked --no-default-features --features libsql)"
                .into(),
        )
    })
}

fn run(cmd: &[&str]) -> Result<()> {
    let out = Command::new(cmd[0]).args(&cmd[1..]).output().map_err(Error::io("running", cmd[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Config(format!("`{}` failed: {}", cmd.join(" "), String::from_utf8_lossy(&out.stderr).trim())))
    }
}

/// A network namespace joined to the host by a veth pair: the host end has
/// `host_ip`, the namespace end `ns_ip`. Needs root (CAP_NET_ADMIN) and
/// iproute2. Deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    /// Namespace name.
    pub name: String,
    /// Address of the host end (servers the namespace must reach listen here).
    pub host_ip: String,
    /// Address of the namespace end.
    pub ns_ip: String,
    host_if: String,
    ns_if: String,
}

impl NetNs {
    /// Creates it. `id` (0–255) keeps concurrent runs apart.
    pub fn create(id: u8) -> Result<NetNs> {
        let pid = std::process::id();
        let n = NetNs {
            name: format!("estate-wan-{pid}"),
            host_ip: format!("10.231.{id}.1"),
            ns_ip: format!("10.231.{id}.2"),
            host_if: format!("esh{}", pid % 100_000),
            ns_if: format!("esn{}", pid % 100_000),
        };
        let fail = |e: Error| {
            Error::Config(format!("{e}. The WAN-partition scenario needs root (CAP_NET_ADMIN) and iproute2 (`apt-get install iproute2`)"))
        };
        run(&["ip", "netns", "add", &n.name]).map_err(fail)?;
        let steps: [&[&str]; 7] = [
            &["ip", "link", "add", &n.host_if, "type", "veth", "peer", "name", &n.ns_if],
            &["ip", "link", "set", &n.ns_if, "netns", &n.name],
            &["ip", "addr", "add", &format!("{}/30", n.host_ip), "dev", &n.host_if],
            &["ip", "link", "set", &n.host_if, "up"],
            &["ip", "netns", "exec", &n.name, "ip", "addr", "add", &format!("{}/30", n.ns_ip), "dev", &n.ns_if],
            &["ip", "netns", "exec", &n.name, "ip", "link", "set", &n.ns_if, "up"],
            &["ip", "netns", "exec", &n.name, "ip", "link", "set", "lo", "up"],
        ];
        for s in steps {
            run(s)?;
        }
        Ok(n)
    }

    /// Cuts (`false`) or restores (`true`) the namespace's link: its end of
    /// the veth goes down, so nothing it sends leaves the namespace.
    pub fn set_link(&self, up: bool) -> Result<()> {
        run(&["ip", "netns", "exec", &self.name, "ip", "link", "set", &self.ns_if, if up { "up" } else { "down" }])
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = run(&["ip", "link", "del", &self.host_if]);
        let _ = run(&["ip", "netns", "del", &self.name]);
    }
}

/// A small tmpfs mounted on a directory (needs root); unmounted on drop.
#[derive(Debug)]
pub struct Tmpfs {
    /// Mount point.
    pub dir: PathBuf,
}

impl Tmpfs {
    /// Mounts `bytes` of tmpfs on `dir` (created).
    pub fn mount(dir: &Path, bytes: u64) -> Result<Tmpfs> {
        std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
        let d = dir.display().to_string();
        run(&["mount", "-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs", &d])
            .map_err(|e| Error::Config(format!("{e}. The spool-full scenario needs root to mount a tmpfs")))?;
        Ok(Tmpfs { dir: dir.to_owned() })
    }

    /// Free bytes on it.
    pub fn free(&self) -> u64 {
        let out = Command::new("df").args(["-B1", "--output=avail"]).arg(&self.dir).output();
        out.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).lines().nth(1)?.trim().parse().ok()).unwrap_or(0)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Options of the hidden `estate tcp-relay`.
#[derive(Debug, Clone, clap::Args)]
pub struct RelayArgs {
    /// Listen here.
    #[arg(long)]
    pub listen: String,
    /// Connect each accepted connection here.
    #[arg(long)]
    pub to: String,
}

/// Relays every connection accepted on `listen` to `to`, until the process
/// ends. A connection whose peer cannot be reached is closed.
pub fn relay_forever(args: &RelayArgs) -> Result<()> {
    let l = TcpListener::bind(&args.listen).map_err(|e| Error::Config(format!("binding {}: {e}", args.listen)))?;
    println!("relaying {} to {}", args.listen, args.to);
    relay_accept(l, args.to.clone(), None);
    Ok(())
}

/// Starts relaying `listen` to `to` on background threads, until `stop`.
pub fn relay_in_background(listen: &str, to: &str, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) -> Result<()> {
    let l = TcpListener::bind(listen).map_err(|e| Error::Config(format!("binding {listen}: {e}")))?;
    let to = to.to_owned();
    std::thread::spawn(move || relay_accept(l, to, Some(stop)));
    Ok(())
}

fn relay_accept(l: TcpListener, to: String, stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>) {
    use std::sync::atomic::Ordering;
    let _ = l.set_nonblocking(stop.is_some());
    loop {
        if stop.as_ref().is_some_and(|s| s.load(Ordering::Relaxed)) {
            return;
        }
        let client = match l.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(_) => continue,
        };
        let _ = client.set_nonblocking(false);
        let Ok(server) = std::net::TcpStream::connect_timeout(&match to.parse() {
            Ok(a) => a,
            Err(_) => return,
        }, Duration::from_secs(5)) else {
            continue;
        };
        for (mut from, mut into) in [(client.try_clone(), server.try_clone()), (server.try_clone(), client.try_clone())]
            .into_iter()
            .filter_map(|(a, b)| Some((a.ok()?, b.ok()?)))
        {
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut from, &mut into);
                let _ = into.shutdown(std::net::Shutdown::Both);
                let _ = from.shutdown(std::net::Shutdown::Both);
            });
        }
    }
}
