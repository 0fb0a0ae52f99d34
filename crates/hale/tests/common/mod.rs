//! Harness for end-to-end tests of the `hale` binary: free loopback ports, a
//! server child process that is killed on drop, a bounded command runner, a
//! tiny std-only HTTP/1.1 client and FHIR fixture helpers.

#![allow(dead_code)]

use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const HALE: &str = env!("CARGO_BIN_EXE_hale");

/// The factor every wait of these tests is multiplied by: the environment
/// variable `HALE_TEST_TIMEOUT_SCALE` (a positive float; default 1). Raise it
/// on a slow or busy machine. Waits are upper bounds, never timing assertions.
pub fn timeout_scale() -> f64 {
    std::env::var("HALE_TEST_TIMEOUT_SCALE")
        .ok()
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|k| k.is_finite() && *k > 0.0)
        .unwrap_or(1.0)
}

/// `d` times [`timeout_scale`].
pub fn scaled(d: Duration) -> Duration {
    d.mul_f64(timeout_scale())
}

/// Upper bound for a server to become ready (generous: debug build, shared cores).
pub const READY_WAIT: Duration = Duration::from_secs(60);
/// Upper bound for a one-shot command (`--help`, import, export) to finish.
/// These bounds are used scaled (see [`scaled`]).
pub const COMMAND_WAIT: Duration = Duration::from_secs(120);
/// Upper bound for a server to exit after a signal.
pub const EXIT_WAIT: Duration = Duration::from_secs(30);
/// Socket read/write timeout of the test client.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

pub const NHS_SYSTEM: &str = "https://fhir.nhs.uk/Id/nhs-number";

pub const ADMIN_TOKEN: &str = "e2e-admin-token";
pub const CLIN_TOKEN: &str = "e2e-clinician-token";

/// Every environment variable the binary reads; children start without them
/// so the developer's shell cannot change what a test sees.
const HALE_ENV: &[&str] = &[
    "HALE_CONFIG",
    "HALE_LISTEN",
    "HALE_DATA",
    "HALE_BASE_URL",
    "HALE_OPEN_ACCESS",
    "HALE_DEMO_PATIENTS",
    "HALE_BODY_BYTES_MAX",
    "HALE_LOG",
    "HALE_LOG_JSON",
    "HALE_URL",
    "HALE_TOKEN",
    "HALE_TLS_CERT",
    "HALE_TLS_KEY",
];

/// A free loopback port below the kernel's ephemeral range, released for
/// the caller to bind. Not port 0's answer: a port from the ephemeral range
/// can be taken as the local end of some outgoing connection while a test's
/// server is down between a kill and its restart (as `hale up` chooses; see
/// `local::bind_outside_ephemeral_range`).
pub fn free_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let seed = std::collections::hash_map::RandomState::new();
    for attempt in 0..200u64 {
        if low <= 11_000 {
            break;
        }
        let mut h = seed.build_hasher();
        h.write_u64(attempt);
        let port = 10_000 + (h.finish() % u64::from(low - 10_000)) as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            return l.local_addr().expect("local_addr").port();
        }
    }
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// `hale` with a clean environment and `dir` as working directory (so any
/// default `./hale-data` lands in the test's own tempdir).
pub fn hale_cmd(dir: &Path) -> Command {
    let mut c = Command::new(HALE);
    for k in HALE_ENV {
        c.env_remove(k);
    }
    // Error messages as users see them, without backtraces.
    c.env_remove("RUST_BACKTRACE").env_remove("RUST_LIB_BACKTRACE");
    c.env("NO_COLOR", "1")
        .env("HALE_LOG", "info")
        .current_dir(dir)
        .stdin(Stdio::null());
    c
}

/// Output of a finished command.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn assert_success(&self, what: &str) {
        assert!(
            self.status.success(),
            "{what} failed with {}\n--- stdout\n{}\n--- stderr\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
    }
}

/// Run a command to completion (output captured in files under `dir`, so a
/// chatty child cannot block on a full pipe), killing it after `COMMAND_WAIT`.
pub fn run(mut cmd: Command, dir: &Path, label: &str) -> Output {
    let out_path = dir.join(format!("{label}.stdout"));
    let err_path = dir.join(format!("{label}.stderr"));
    cmd.stdout(std::fs::File::create(&out_path).expect("create stdout file"));
    cmd.stderr(std::fs::File::create(&err_path).expect("create stderr file"));
    let mut child = cmd.spawn().expect("spawn hale");
    let limit = scaled(COMMAND_WAIT);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`{label}` did not finish within {limit:?} (HALE_TEST_TIMEOUT_SCALE scales it)\n--- stdout\n{}\n--- stderr\n{}",
                read_lossy(&out_path),
                read_lossy(&err_path)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: read_lossy(&out_path),
        stderr: read_lossy(&err_path),
    }
}

pub fn read_lossy(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------
// Server child process

/// A running `hale serve`. Killed (SIGKILL) and reaped on drop, so no server
/// outlives its test, even one that panics.
pub struct Server {
    child: Option<Child>,
    pub port: u16,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
}

impl Server {
    /// Spawn `cmd` (a `hale serve ...` command) that should listen on `port`;
    /// logs go to `<log_dir>/<label>.{stdout,stderr}`.
    pub fn spawn(mut cmd: Command, port: u16, log_dir: &Path, label: &str) -> Server {
        let stdout_path = log_dir.join(format!("{label}.stdout"));
        let stderr_path = log_dir.join(format!("{label}.stderr"));
        cmd.stdout(std::fs::File::create(&stdout_path).expect("create stdout file"));
        cmd.stderr(std::fs::File::create(&stderr_path).expect("create stderr file"));
        let child = cmd.spawn().expect("spawn hale serve");
        Server {
            child: Some(child),
            port,
            stderr_path,
            stdout_path,
        }
    }

    /// Spawn and wait until GET /readyz answers 200.
    pub fn start(cmd: Command, port: u16, log_dir: &Path, label: &str) -> Server {
        let mut s = Server::spawn(cmd, port, log_dir, label);
        s.wait_ready();
        s
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    pub fn logs(&self) -> String {
        format!(
            "--- server stdout\n{}\n--- server stderr\n{}",
            read_lossy(&self.stdout_path),
            self.stderr()
        )
    }

    /// Poll GET /readyz until 200; fail (with the server's stderr) if the
    /// process exits or `READY_WAIT` passes.
    pub fn wait_ready(&mut self) {
        self.wait_ready_within(READY_WAIT);
    }

    /// `wait_ready` with a longer limit (scaled), for a start that loads
    /// the demo board first.
    pub fn wait_ready_within(&mut self, unscaled: Duration) {
        let limit = scaled(unscaled);
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .expect("server is running")
                .try_wait()
                .expect("try_wait")
            {
                panic!("hale serve exited with {status} before it was ready\n{}", self.logs());
            }
            let last = match try_request(self.port, "GET", "/readyz", None, None) {
                Ok(r) if r.status == 200 => return,
                Ok(r) => format!("HTTP {} {}", r.status, r.text()),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                panic!(
                    "hale serve on port {} was not ready within {limit:?} (last: {last}; HALE_TEST_TIMEOUT_SCALE scales it)\n{}",
                    self.port,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Send a signal with `kill(1)`.
    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} {} failed: {st}", self.pid());
    }

    /// Wait for the process to exit, at most `EXIT_WAIT`; None if it did not.
    pub fn wait_exit(&mut self) -> Option<ExitStatus> {
        let deadline = Instant::now() + scaled(EXIT_WAIT);
        let child = self.child.as_mut().expect("server is running");
        loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                self.child = None;
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL (a crash) and reap.
    pub fn crash(&mut self) {
        self.signal("KILL");
        let st = self.wait_exit().expect("a SIGKILLed server exits");
        assert!(!st.success(), "a SIGKILLed server cannot exit cleanly: {st}");
    }

    pub fn get(&self, path: &str, token: Option<&str>) -> Reply {
        request(self.port, "GET", path, token, None)
    }

    pub fn put(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        request(self.port, "PUT", path, token, Some(body.to_string().as_bytes()))
    }

    pub fn delete(&self, path: &str, token: Option<&str>) -> Reply {
        request(self.port, "DELETE", path, token, None)
    }

    /// Current value of a gauge line of GET /metrics, e.g. `hale_resources{type="Patient"}`.
    pub fn gauge(&self, series: &str) -> Option<f64> {
        let text = self.get("/metrics", None).text();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: &Value) -> Reply {
        request(self.port, "POST", path, token, Some(body.to_string().as_bytes()))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// ---------------------------------------------------------------------------
// HTTP/1.1 client: one request per connection (`Connection: close`).

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

pub fn request(port: u16, method: &str, path: &str, token: Option<&str>, body: Option<&[u8]>) -> Reply {
    try_request(port, method, path, token, body).unwrap_or_else(|e| panic!("{method} {path} on port {port}: {e}"))
}

pub fn try_request(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(scaled(IO_TIMEOUT)))?;
    s.set_write_timeout(Some(scaled(IO_TIMEOUT)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nAccept: application/fhir+json\r\n"
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if let Some(b) = body {
        head.push_str(&format!(
            "Content-Type: application/fhir+json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    if let Some(b) = body {
        s.write_all(b)?;
    }
    s.flush()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let _ = s.shutdown(Shutdown::Both);
    parse_reply(&raw).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn parse_reply(raw: &[u8]) -> Result<Reply, String> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers in the reply")?;
    let head = std::str::from_utf8(&raw[..split]).map_err(|e| format!("reply head is not UTF-8: {e}"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or("");
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked"));
    if chunked {
        body = dechunk(&body)?;
    }
    Ok(Reply { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or("truncated chunk size")?;
        let size_text = std::str::from_utf8(&b[..eol]).map_err(|e| e.to_string())?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("bad chunk size {size_text:?}: {e}"))?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err("truncated chunk".into());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

/// True when nothing accepts connections on `port`.
pub fn nothing_listens(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2)).is_err()
}

// ---------------------------------------------------------------------------
// Fixtures

/// The `n`th valid NHS number in the test range 999 000 000x upwards from
/// `start` (nine leading digits; those whose check digit would be 10 are skipped).
pub fn nhs_numbers(start: u32, n: usize) -> Vec<String> {
    (start..).filter_map(nhs_from_nine).take(n).collect()
}

/// Nine leading digits to a full NHS number, or None when no check digit exists.
pub fn nhs_from_nine(nine: u32) -> Option<String> {
    let s = format!("{nine:09}");
    let sum: u32 = s
        .bytes()
        .zip((2..=10u32).rev())
        .map(|(d, w)| u32::from(d - b'0') * w)
        .sum();
    match 11 - sum % 11 {
        10 => None,
        11 => Some(format!("{s}0")),
        c => Some(format!("{s}{c}")),
    }
}

/// A valid NHS number with its check digit changed: fails modulus 11.
pub fn bad_nhs(valid: &str) -> String {
    let (nine, check) = valid.split_at(9);
    let c: u8 = check.parse().expect("digit");
    format!("{nine}{}", (c + 1) % 10)
}

pub fn patient(id: Option<&str>, nhs: &str, family: &str) -> Value {
    let mut p = serde_json::json!({
        "resourceType": "Patient",
        "identifier": [{"system": NHS_SYSTEM, "value": nhs}],
        "name": [{"family": family, "given": ["Test"]}],
        "birthDate": "1970-01-01"
    });
    if let Some(id) = id {
        p["id"] = id.into();
    }
    p
}

pub fn location(id: Option<&str>, name: &str) -> Value {
    let mut l = serde_json::json!({"resourceType": "Location", "name": name, "status": "active"});
    if let Some(id) = id {
        l["id"] = id.into();
    }
    l
}

/// A TOML config: `listen`, `data` and an admin and a clinician token.
pub fn write_config(path: &Path, listen: &str, data: &Path) {
    let text = format!(
        r#"listen = "{listen}"
data = '{}'

[[auth.tokens]]
token = "{ADMIN_TOKEN}"
user = "e2e.admin"
role = "admin"

[[auth.tokens]]
token = "{CLIN_TOKEN}"
user = "dr.e2e"
role = "clinician"
"#,
        data.display()
    );
    std::fs::write(path, text).expect("write config");
}

/// `hale serve --config <file>` with a config naming `port` and `<dir>/data`.
pub fn configured_server(dir: &Path, port: u16, label: &str) -> Server {
    let cfg = dir.join("hale.toml");
    write_config(&cfg, &format!("127.0.0.1:{port}"), &dir.join("data"));
    let mut cmd = hale_cmd(dir);
    cmd.arg("serve").arg("--config").arg(&cfg);
    Server::start(cmd, port, dir, label)
}

/// Matches of a searchset Bundle (entries with search.mode = match).
pub fn matches(bundle: &Value) -> Vec<Value> {
    assert_eq!(bundle["resourceType"], "Bundle", "not a Bundle: {bundle}");
    bundle["entry"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|e| e.pointer("/search/mode").and_then(Value::as_str) == Some("match"))
                .map(|e| e["resource"].clone())
                .collect()
        })
        .unwrap_or_default()
}

/// `/Patient?identifier=<nhs system>|<nhs>`.
pub fn by_nhs(nhs: &str) -> String {
    format!("/Patient?identifier={NHS_SYSTEM}%7C{nhs}")
}

/// SIGKILL a whole process group (a child spawned with `process_group(0)`).
///
/// Always through this helper: procps-ng 4.0's `kill -KILL -1234` parses the
/// negative id as an option and calls `kill(-9, SIGKILL)`, which kills
/// process group 9, whatever that is on the machine (it took down CI).
/// `-s KILL --` makes the id an operand.
pub fn kill_process_group(pid: u32) {
    assert!(pid > 1, "refusing to signal process group {pid}");
    let _ = Command::new("kill")
        .args(["-s", "KILL", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}
