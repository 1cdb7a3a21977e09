//! The default network, in both isolation modes (VM mode through passt on QEMU here and on
//! the built-in VMM in the nested-KVM guest; container mode through pasta): published
//! ports (TCP and UDP, two containers at once, a port conflict), the host's loopback
//! services through `host.vessel.internal`, DNS through the host's resolver (a dnsmasq the
//! test starts), `--network none`, and that no helper or bound port outlives its container
//! on any way it can end.

#[macro_use]
mod common;
#[path = "common/container.rs"]
mod ctr;
mod vm_support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::{Entry, Layer, TestImage, TestRoot};

/// `vessel` for one mode, with the network test image loaded.
enum Mode {
    Container {
        root: TestRoot,
        image: String,
    },
    Vm {
        env: vm_support::VmEnv,
        image: String,
    },
}

/// The UDP echo server, built static from tests/support/udp-echo.c once per test binary.
fn udp_echo() -> &'static [u8] {
    static BIN: OnceLock<Vec<u8>> = OnceLock::new();
    BIN.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/udp-echo.c");
        let out = std::env::temp_dir().join(format!("vessel-udp-echo-{}", std::process::id()));
        let cc = if common::have("musl-gcc") {
            "musl-gcc"
        } else {
            "cc"
        };
        let st = Command::new(cc)
            .args(["-static", "-Os", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("running the C compiler (scripts/setup.sh installs musl-tools)");
        assert!(st.success(), "building {}", src.display());
        let bin = std::fs::read(&out).unwrap();
        let _ = std::fs::remove_file(&out);
        bin
    })
}

fn image() -> TestImage {
    TestImage::new("vessel-test/net:latest")
        .layer(Layer::new(vec![Entry::File {
            path: "bin/udp-echo".into(),
            data: udp_echo().to_vec(),
            mode: 0o755,
        }]))
        .expose("8080/tcp")
        .expose("9999/udp")
}

impl Mode {
    fn container() -> Option<Mode> {
        if ctr::skip() || common::skip_without(&["pasta"]) {
            return None;
        }
        let root = TestRoot::new();
        let image = root.load(&image());
        Some(Mode::Container { root, image })
    }

    fn vm(vmm: &str) -> Option<Mode> {
        if common::skip_without(&["passt"]) {
            return None;
        }
        let env = vm_support::setup(vmm)?;
        let image = env.root.load(&image());
        Some(Mode::Vm { env, image })
    }

    fn root(&self) -> &Path {
        match self {
            Mode::Container { root, .. } => root.path(),
            Mode::Vm { env, .. } => env.root.path(),
        }
    }

    fn vessel(&self, args: &[&str]) -> Command {
        match self {
            Mode::Container { root, .. } => {
                let mut c = root.cmd();
                c.args(args).stdin(Stdio::null());
                c
            }
            Mode::Vm { env, .. } => env.cmd(args),
        }
    }

    /// `vessel run` args for this mode: `opts`, the image, `cmd`.
    fn run_args(&self, opts: &[&str], cmd: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec!["run".into()];
        match self {
            Mode::Container { .. } => a.extend(["--isolation".into(), "container".into()]),
            Mode::Vm { env, .. } => a.extend(["--vmm".into(), env.vmm.clone()]),
        }
        a.extend(opts.iter().map(|s| s.to_string()));
        a.push(match self {
            Mode::Container { image, .. } | Mode::Vm { image, .. } => image.clone(),
        });
        a.extend(cmd.iter().map(|s| s.to_string()));
        a
    }

    fn run(&self, opts: &[&str], cmd: &[&str]) -> Output {
        let args = self.run_args(opts, cmd);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.vessel(&args).output().unwrap()
    }

    /// `run -d`; the container's ID.
    fn detached(&self, opts: &[&str], cmd: &[&str]) -> String {
        let mut o = vec!["-d"];
        o.extend_from_slice(opts);
        let out = self.run(&o, cmd);
        let (so, se) = vm_support::text(&out);
        assert_eq!(out.status.code(), Some(0), "run -d: {se}");
        so.trim().to_string()
    }

    /// The host port `vessel port CONTAINER PORT` names.
    fn host_port(&self, container: &str, port: &str) -> u16 {
        let out = self.ok(&["port", container, port]);
        let p = out.trim().rsplit(':').next().unwrap_or_default();
        p.parse()
            .unwrap_or_else(|_| panic!("vessel port said {out:?}"))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.vessel(args).output().unwrap();
        let (so, se) = vm_support::text(&out);
        assert_eq!(out.status.code(), Some(0), "vessel {args:?}: {se}");
        so
    }
}

impl Drop for Mode {
    /// A test that fails half-way must not leave containers (and their helpers, holding
    /// ports) running; the VM environment does the same for itself.
    fn drop(&mut self) {
        if let Mode::Container { root, .. } = self {
            let ids = root.run(&["ps", "-aq"]);
            let ids = String::from_utf8_lossy(&ids.stdout).into_owned();
            let mut args = vec!["rm", "-f"];
            args.extend(ids.split_whitespace());
            if args.len() > 2 {
                let _ = root.run(&args);
            }
        }
    }
}

/// A port nothing holds now, on the host's loopback.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GETs `path` from 127.0.0.1:`port`, retrying until `secs` pass (a VM's server starts
/// after its boot); the response body.
fn http_get(port: u16, path: &str, secs: u64) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let attempt = (|| -> std::io::Result<String> {
            let mut s = TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut r = String::new();
            s.read_to_string(&mut r)?;
            Ok(r)
        })();
        match attempt {
            Ok(r) if r.starts_with("HTTP/1.") && r.contains(" 200 ") => {
                return Ok(r.split("\r\n\r\n").nth(1).unwrap_or_default().to_string())
            }
            other if Instant::now() > deadline => return Err(format!("{other:?}")),
            _ => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Host processes that are this container's network helper (their command lines name its
/// ID: passt's socket, pasta's namespace).
fn helpers_of(id: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            e.file_name().to_str()?.parse::<i32>().ok()?;
            let c = std::fs::read(e.path().join("cmdline")).ok()?;
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            ((c.contains("passt") || c.contains("pasta")) && c.contains(id)).then_some(c)
        })
        .collect()
}

fn port_free(port: u16) -> bool {
    TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// A server for `-d`: httpd on 8080 serving `marker`, and the UDP echo on 9999.
fn servers(marker: &str) -> Vec<String> {
    vec![
        "sh".into(),
        "-c".into(),
        format!("echo {marker} > /tmp/i.html; udp-echo 9999 & exec httpd -f -p 8080 -h /tmp"),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// `-p` serves pages (explicit and chosen host ports, two containers at once), `vessel
/// port` and `ps` tell the mappings, UDP round-trips, and a taken port fails the next run
/// before it starts.
fn published_ports(m: &Mode) {
    let hp = free_port();
    let a_cmd = servers("page-from-a");
    let a = m.detached(
        &[
            "--name",
            "a",
            "-p",
            &format!("127.0.0.1:{hp}:8080"),
            "-p",
            "9999/udp",
        ],
        &strs(&a_cmd),
    );
    let b_cmd = servers("page-from-b");
    let b = m.detached(&["--name", "b", "-P"], &strs(&b_cmd));
    assert_eq!(http_get(hp, "/i.html", 60).unwrap(), "page-from-a\n");

    // `vessel port` in docker's form; `-P` chose free ports for what the image exposes.
    let ports_b = m.ok(&["port", "b"]);
    assert!(ports_b.contains("8080/tcp -> 0.0.0.0:"), "{ports_b}");
    assert!(ports_b.contains("9999/udp -> 0.0.0.0:"), "{ports_b}");
    let hp_b = m.host_port("b", "8080");
    assert_eq!(http_get(hp_b, "/i.html", 60).unwrap(), "page-from-b\n");
    let ps = m.ok(&["ps"]);
    assert!(ps.contains("PORTS"), "{ps}");
    assert!(ps.contains(&format!("127.0.0.1:{hp}->8080/tcp")), "{ps}");

    // UDP through the chosen host port, from the host's own non-loopback address: pasta
    // (2023-03) answers no UDP that comes from the host's loopback (docs/networking.md).
    let udp_port = m.host_port("a", "9999/udp");
    let probe = UdpSocket::bind("0.0.0.0:0").unwrap();
    probe
        .connect("198.51.100.1:9")
        .expect("the host has a default route");
    let host_ip = probe.local_addr().unwrap().ip();
    let s = UdpSocket::bind((host_ip, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut got = None;
    for _ in 0..15 {
        s.send_to(b"ping-over-udp", (host_ip, udp_port)).unwrap();
        let mut buf = [0u8; 64];
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            got = Some(buf[..n].to_vec());
            break;
        }
    }
    assert_eq!(got.as_deref(), Some(&b"ping-over-udp"[..]), "no UDP echo");

    // The same host port again: refused in one line, exit 125, nothing created.
    let before = m.ok(&["ps", "-aq"]);
    let out = m.run(&["-p", &format!("127.0.0.1:{hp}:80")], &["true"]);
    let (_, err) = vm_support::text(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("127.0.0.1:{hp}")) && err.contains("in use"),
        "{err}"
    );
    assert_eq!(m.ok(&["ps", "-aq"]), before);

    m.ok(&["rm", "-f", &a, &b]);
    assert!(ctr::wait_for(15, || port_free(hp) && port_free(hp_b)));
    assert!(helpers_of(&a).is_empty() && helpers_of(&b).is_empty());
}

/// A server on the host's loopback, answering one fixed page to every connection.
fn host_server(body: &'static str) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
    port
}

/// A DNS server for the test on a loopback address of its own; None (SKIP said) without
/// dnsmasq.
struct Dns {
    child: std::process::Child,
    resolv: PathBuf,
    _dir: tempfile::TempDir,
}

impl Dns {
    fn start() -> Option<Dns> {
        if common::skip_without(&["dnsmasq", "unshare"]) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        // One address per test process: tests of other binaries may run one at once.
        let pid = std::process::id();
        let addr = format!("127.53.{}.{}", (pid >> 8) & 0xff, (pid & 0xff).max(1));
        let child = Command::new("dnsmasq")
            .args([
                "--no-daemon",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
            ])
            .arg(format!("--listen-address={addr}"))
            .arg("--host-record=test.vessel.example,192.0.2.77")
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq");
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(&resolv, format!("nameserver {addr}\n")).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        Some(Dns {
            child,
            resolv,
            _dir: dir,
        })
    }

    /// `cmd` run where the host's /etc/resolv.conf names this server (a mount namespace of
    /// its own), as vessel's helper then reads it.
    fn around(&self, cmd: Command) -> Command {
        let mut c = Command::new("unshare");
        c.args(["-m", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/resolv.conf && exec "$@""#)
            .arg(&self.resolv)
            .arg(cmd.get_program())
            .args(cmd.get_args())
            .stdin(Stdio::null());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The container's names and routes: the host's loopback services through
/// `host.vessel.internal`, DNS through the host's resolver, and the files docker gives.
fn names_and_host_services(m: &Mode) {
    let port = host_server("served-by-the-host");
    let script = format!(
        "cat /etc/resolv.conf; grep -c host.vessel.internal /etc/hosts; hostname; \
         wget -qO- http://host.vessel.internal:{port}/"
    );
    let out = m.run(&["--rm", "--hostname", "netbox"], &["sh", "-c", &script]);
    let (so, se) = vm_support::text(&out);
    assert_eq!(out.status.code(), Some(0), "{so}{se}");
    assert!(so.contains("nameserver 10.0.2.3\n"), "{so}");
    assert!(so.contains("1\nnetbox\n"), "{so}");
    assert!(so.ends_with("served-by-the-host"), "{so}");

    let Some(dns) = Dns::start() else { return };
    let args = m.run_args(&["--rm"], &["nslookup", "-type=a", "test.vessel.example"]);
    let out = dns.around(m.vessel(&strs(&args))).output().unwrap();
    let (so, se) = vm_support::text(&out);
    assert_eq!(out.status.code(), Some(0), "{so}{se}");
    assert!(so.contains("192.0.2.77"), "{so}");
}

/// `--network none`: loopback only (and no card at all in a VM), no route out; `-p` with
/// it is refused before anything starts.
fn none_has_no_route_out(m: &Mode) {
    let port = host_server("unreachable");
    let script =
        format!("ls /sys/class/net; ip route; wget -qO- http://10.0.2.2:{port}/ || echo no-route");
    let out = m.run(&["--rm", "--network", "none"], &["sh", "-c", &script]);
    let (so, se) = vm_support::text(&out);
    assert_eq!(out.status.code(), Some(0), "{so}{se}");
    assert!(so.starts_with("lo\n"), "{so}");
    assert!(so.trim_end().ends_with("no-route"), "{so}");
    assert!(
        !so.contains("unreachable\n") && !so.contains("default"),
        "{so}"
    );
    let out = m.run(&["--network", "none", "-p", "8080:80"], &["true"]);
    assert_eq!(out.status.code(), Some(125));
    assert!(vm_support::text(&out)
        .1
        .contains("-p needs the default network"));
}

/// Every way a container ends takes its helper and its ports with it: the process exits,
/// `stop`, `kill`, `rm -f`, `kill -9` of its supervisor (the next command cleans up), and
/// in a VM the VMM's crash.
fn helpers_end_with_their_container(m: &Mode) {
    let dir = |id: &str| m.root().join("containers").join(id);
    let check = |id: &str, hp: u16, how: &str| {
        let gone = ctr::wait_for(20, || {
            let _ = m.vessel(&["ps", "-a"]).output();
            helpers_of(id).is_empty() && port_free(hp)
        });
        assert!(gone, "{how}: helper {:?} or port {hp} left", helpers_of(id));
        let ps = m.ok(&["ps", "-a", "--format", "json"]);
        let line = ps
            .lines()
            .find(|l| l.contains(id))
            .unwrap_or_default()
            .to_string();
        assert!(line.contains("\"State\":\"exited\""), "{how}: {line}");
    };
    let start = |cmd: &[&str]| {
        let hp = free_port();
        let id = m.detached(&["-p", &format!("127.0.0.1:{hp}:8080")], cmd);
        assert!(!helpers_of(&id).is_empty(), "no helper for {id}");
        (id, hp)
    };
    let serve = servers("x");
    let serve = strs(&serve);

    let (id, hp) = start(&["sleep", "2"]);
    check(&id, hp, "exit");
    let (id, hp) = start(&serve);
    m.ok(&["stop", "-t", "1", &id]);
    check(&id, hp, "stop");
    let (id, hp) = start(&serve);
    m.ok(&["kill", &id]);
    check(&id, hp, "kill");
    let (id, hp) = start(&serve);
    m.ok(&["rm", "-f", &id]);
    // As with docker, the port is free as soon as `rm -f` returns.
    assert!(port_free(hp), "rm -f returned with port {hp} still bound");
    assert!(
        ctr::wait_for(20, || helpers_of(&id).is_empty() && port_free(hp)),
        "rm -f"
    );

    let (id, hp) = start(&serve);
    let sup = ctr::supervisor_of(&id).expect("the detached supervisor runs");
    // SAFETY: sending a signal has no memory-safety preconditions.
    unsafe { libc::kill(sup, libc::SIGKILL) };
    check(&id, hp, "kill -9 of the supervisor");

    if let Mode::Vm { .. } = m {
        let (id, hp) = start(&serve);
        let pid: i32 = std::fs::read_to_string(dir(&id).join("vmm.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: as above.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        check(&id, hp, "a crash of the VMM");
    }
}

in_each_mode!(
    published_ports,
    names_and_host_services,
    none_has_no_route_out,
    helpers_end_with_their_container,
);

/// `--network host` in VM mode is refused before anything starts.
#[test]
fn host_network_is_refused_for_a_vm() {
    if !common::is_root() {
        eprintln!("SKIP: needs root");
        return;
    }
    let root = TestRoot::new();
    let out = root.run(&[
        "run",
        "--network",
        "host",
        "vessel-test/none:latest",
        "true",
    ]);
    assert_eq!(out.status.code(), Some(125));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--network host is not available with vm isolation"),
        "{err}"
    );
}

/// A bad `-p` is a usage error that says what was wrong.
#[test]
fn malformed_publish_values_are_refused() {
    let root = TestRoot::new();
    for (p, why) in [
        ("80/sctp", "unknown protocol"),
        ("x:80", "not a number"),
        ("[::1]:1:2", "IPv6"),
    ] {
        let out = root.run(&["run", "-p", p, "vessel-test/none:latest", "true"]);
        assert_eq!(out.status.code(), Some(125), "{p}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(why) && err.lines().count() == 1, "{p}: {err}");
    }
}
