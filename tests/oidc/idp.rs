//! Starts the test OpenID provider (`idp.mjs` beside this file) for Rust
//! tests: `#[path = ".../tests/oidc/idp.rs"] mod idp;` in a test crate.
//! Needs Node.js and `node_modules` here (`npm ci`; tools/test.sh runs it).

#![allow(dead_code)]

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// This directory (`tests/oidc`), found from the test crate's manifest.
pub fn idp_dir() -> PathBuf {
    let mut d = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    while !d.join("tests/oidc/idp.mjs").is_file() {
        assert!(d.pop(), "tests/oidc/idp.mjs not found above the crate");
    }
    d.join("tests/oidc")
}

/// One running provider; killed on drop.
pub struct Idp {
    child: Child,
    pub port: u16,
}

impl Idp {
    /// A provider on `port` signing with the key in `keys` (made, with id
    /// `kid`, when the file is missing), issuing access tokens for
    /// `audience`; `redirect` lists the `hale-ui` client's redirect URIs.
    pub fn start(port: u16, keys: &Path, kid: &str, audience: &str, redirect: Option<&str>) -> Idp {
        Idp::start_with(port, keys, kid, audience, redirect, &[])
    }

    /// [`Idp::start`] with more arguments for `idp.mjs` (e.g. `--ui-ttl 3`).
    pub fn start_with(
        port: u16,
        keys: &Path,
        kid: &str,
        audience: &str,
        redirect: Option<&str>,
        extra: &[&str],
    ) -> Idp {
        let dir = idp_dir();
        assert!(
            dir.join("node_modules/oidc-provider").is_dir(),
            "{}/node_modules is missing: run `npm ci` there (tools/test.sh does)",
            dir.display()
        );
        let mut cmd = Command::new("node");
        cmd.arg(dir.join("idp.mjs"))
            .args(["--port", &port.to_string(), "--audience", audience, "--kid", kid])
            .arg("--keys")
            .arg(keys);
        if let Some(r) = redirect {
            cmd.args(["--redirect", r]);
        }
        cmd.args(extra);
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start node (Node.js is needed for the OpenID provider)");
        let mut line = String::new();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        out.read_line(&mut line).expect("read the provider's ready line");
        assert!(line.starts_with("ready "), "the provider did not start: {line:?}");
        // Keep reading: with the pipe closed, the provider's next write to
        // stdout (its interaction pages log there) kills it with EPIPE.
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Idp { child, port }
    }

    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
