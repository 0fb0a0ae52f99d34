//! Day-to-day operations of the `hale` binary: `hale doctor`, the default
//! logs of a node, and output commands on a closed pipe.

mod common;

use common::*;
use serde_json::json;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new().prefix("hale-ops-").tempdir().expect("tempdir")
}

/// `hale doctor` with the disk thresholds at 0 (a test must not depend on
/// how full the machine's disk is).
fn doctor(dir: &Path, args: &[&str]) -> Command {
    let mut c = hale_cmd(dir);
    c.args(["doctor", "--disk-warn-percent", "0", "--disk-fail-percent", "0"])
        .args(args);
    c
}

/// The line of check `name` in doctor's output, e.g. `line(out, "node")`.
fn line<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.get(6..).is_some_and(|rest| rest.starts_with(&format!("{name} "))))
        .unwrap_or_else(|| panic!("no `{name}` check in doctor's output:\n{stdout}"))
}

/// A demo node started with the default log filter: its checks are OK, a
/// learner that cannot be reached is a warning, and its log has the leadership
/// line but none of openraft's INFO lines.
#[test]
fn doctor_checks_a_demo_node_and_its_log_is_quiet() {
    let dir = tempdir();
    let port = free_port();
    let data = dir.path().join("data");
    let mut cmd = hale_cmd(dir.path());
    // The default filter, not the harness's HALE_LOG=info.
    cmd.env_remove("HALE_LOG").env_remove("RUST_LOG");
    cmd.args([
        "serve",
        "--demo",
        "--demo-patients",
        "20",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ])
    .arg("--data")
    .arg(&data);
    let s = Server::start(cmd, port, dir.path(), "demo");
    let url = s.base_url();

    let out = run(
        {
            let mut c = doctor(dir.path(), &["--url", &url, "--token", "demo-admin", "--data"]);
            c.arg(&data);
            c
        },
        dir.path(),
        "doctor",
    );
    out.assert_success("hale doctor on a healthy node");
    for name in ["disk", "node", "cluster", "clock"] {
        assert!(
            line(&out.stdout, name).starts_with("OK    "),
            "`{name}` should be OK:\n{}",
            out.stdout
        );
    }
    assert!(
        line(&out.stdout, "cluster").contains("node 1 leads term"),
        "{}",
        out.stdout
    );
    // No [downtime] sites on a demo node: a warning that says what to do.
    let packs = line(&out.stdout, "downtime packs");
    assert!(packs.starts_with("WARN  "), "{}", out.stdout);
    assert!(out.stdout.contains("fix: list each site"), "{}", out.stdout);
    // No [backup] on a demo node: a warning, not a failure.
    let backup = line(&out.stdout, "backup");
    assert!(
        backup.starts_with("WARN  ") && backup.contains("no backups configured"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains(" 0 FAIL"), "{}", out.stdout);

    // A learner nobody can reach: a WARN naming it, with what to do.
    let dead = free_port();
    let r = s.post(
        "/cluster/learners",
        Some("demo-admin"),
        &json!({"node_id": 9, "raft_addr": format!("127.0.0.1:{dead}"),
                "api_url": format!("http://127.0.0.1:{dead}"), "site": "QEH"}),
    );
    assert_eq!(r.status, 200, "{}\n{}", r.text(), s.logs());
    let out = run(
        doctor(dir.path(), &["--url", &url, "--token", "demo-admin"]),
        dir.path(),
        "doctor-learner",
    );
    out.assert_success("a learner that cannot be reached is a warning, not a failure");
    let peer = line(&out.stdout, "peer 9");
    assert!(
        peer.starts_with("WARN  ") && peer.contains("did not answer"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("fix: start node 9"), "{}", out.stdout);

    // The log: Hale's one line per leadership and membership change, no openraft INFO.
    let log = s.stderr();
    assert!(
        log.contains("node 1 leads term 1 after") && log.contains("ms without a leader"),
        "the leadership line is missing:\n{log}"
    );
    assert!(log.contains("membership: node 9 joined as a learner in"), "{log}");
    let openraft_info: Vec<&str> = log.lines().filter(|l| l.contains(" INFO openraft")).collect();
    assert!(
        openraft_info.is_empty(),
        "openraft INFO lines in the default log: {openraft_info:#?}"
    );
    assert!(
        !log.contains("RaftState {"),
        "a state struct dump in the default log:\n{log}"
    );
}

/// A config that does not parse and a node that does not answer are FAILs,
/// with what to do, and doctor exits non-zero; a certificate that expires soon
/// is a WARN.
#[test]
fn doctor_fails_on_a_broken_config_and_an_unreachable_node() {
    let dir = tempdir();
    let nobody = format!("http://127.0.0.1:{}", free_port());

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = 8080\n").unwrap();
    let out = run(
        doctor(dir.path(), &["--config", bad.to_str().unwrap(), "--url", &nobody]),
        dir.path(),
        "doctor-bad",
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let config = line(&out.stdout, "config");
    assert!(
        config.starts_with("FAIL  ") && config.contains("is not valid"),
        "{}",
        out.stdout
    );
    assert!(line(&out.stdout, "node").starts_with("FAIL  "), "{}", out.stdout);
    assert!(out.stdout.contains("fix: correct the file"), "{}", out.stdout);
    assert!(out.stdout.contains("fix: start the node"), "{}", out.stdout);
    assert!(out.stderr.contains("check(s) failed"), "{}", out.stderr);
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);

    // A valid config serving TLS with a certificate that expires in 5 days.
    let ca = dir.path().join("ca");
    run(
        {
            let mut c = hale_cmd(dir.path());
            c.args(["cert", "init", "--dir"]).arg(&ca);
            c
        },
        dir.path(),
        "cert-init",
    )
    .assert_success("hale cert init");
    run(
        {
            let mut c = hale_cmd(dir.path());
            c.args([
                "cert",
                "issue",
                "--name",
                "api",
                "--ip",
                "127.0.0.1",
                "--days",
                "5",
                "--dir",
            ])
            .arg(&ca);
            c
        },
        dir.path(),
        "cert-issue",
    )
    .assert_success("hale cert issue");
    let good = dir.path().join("good.toml");
    write_config(&good, "127.0.0.1:1", &dir.path().join("data"));
    let mut text = std::fs::read_to_string(&good).unwrap();
    text.push_str(&format!(
        "\n[tls]\ncert = '{}'\nkey = '{}'\n",
        ca.join("api.pem").display(),
        ca.join("api-key.pem").display()
    ));
    std::fs::write(&good, text).unwrap();
    let out = run(
        doctor(dir.path(), &["--config", good.to_str().unwrap(), "--url", &nobody]),
        dir.path(),
        "doctor-tls",
    );
    assert_eq!(out.status.code(), Some(1), "the node does not answer: {out:?}");
    assert!(line(&out.stdout, "config").starts_with("OK    "), "{}", out.stdout);
    assert!(line(&out.stdout, "disk").starts_with("OK    "), "{}", out.stdout);
    let cert = line(&out.stdout, "tls cert");
    assert!(
        cert.starts_with("WARN  ") && cert.contains("expires in"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("fix: renew it before then"), "{}", out.stdout);

    // Every command's help shows an example (the unit test walks them all).
    let help = run(
        {
            let mut c = hale_cmd(dir.path());
            c.args(["outage", "report", "--help"]);
            c
        },
        dir.path(),
        "help",
    );
    help.assert_success("hale outage report --help");
    assert!(
        help.stdout.contains("Examples:\n  hale outage report"),
        "{}",
        help.stdout
    );
}

/// `hale doctor | head -0`: the reader is gone before the first line. The
/// command ends (cleanly or by SIGPIPE, as coreutils do) without a panic or a
/// message.
#[test]
fn an_output_command_on_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempdir();
    let nobody = format!("http://127.0.0.1:{}", free_port());
    for args in [
        vec!["doctor", "--url", nobody.as_str(), "--data", "."],
        vec!["--help"],
        vec!["outage", "report", "--help"],
    ] {
        let err_path = dir.path().join("pipe.stderr");
        let mut c = hale_cmd(dir.path());
        c.args(&args)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&err_path).unwrap());
        let mut child = c.spawn().expect("spawn hale");
        // Close the read end at once: every write the child makes hits a closed pipe.
        drop(child.stdout.take());
        let deadline = Instant::now() + scaled(COMMAND_WAIT);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("hale {args:?} did not end on a closed pipe within {COMMAND_WAIT:?} (scaled)");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let stderr = read_lossy(&err_path);
        assert!(
            // 13: SIGPIPE on Linux and the BSDs.
            status.success() || status.signal() == Some(13),
            "hale {args:?} on a closed pipe ended with {status}; stderr:\n{stderr}"
        );
        assert!(
            !stderr.contains("panicked") && !stderr.contains("Broken pipe") && !stderr.contains("Error"),
            "hale {args:?} on a closed pipe wrote:\n{stderr}"
        );
    }
}
