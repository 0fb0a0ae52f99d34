//! Email through a real SMTP server: Python's aiosmtpd (installed by .ci/run),
//! started by each test on a free loopback port, writing what it receives to
//! a Maildir that the test reads back. Nothing is mocked on the sending side.

mod common;

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use hale_notify::{
    staff_lists, Adapter, Adapters, Channel, ItemState, OutcomeStatus, SmtpAdapter, SmtpConfig, StaffReason, Worker,
    WorkerPolicy,
};

fn require_aiosmtpd() {
    let out = Command::new("python3").args(["-c", "import aiosmtpd"]).output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "these tests need Python's aiosmtpd (a real SMTP server); install it with \
             `python3 -m pip install aiosmtpd` (.ci/run does this). python3 said: {}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!("these tests need python3 with aiosmtpd; python3 could not be run: {e}"),
    }
}

/// An aiosmtpd process writing to a Maildir; killed on drop.
struct SmtpServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
    maildir: PathBuf,
}

impl SmtpServer {
    fn start() -> SmtpServer {
        SmtpServer::start_on(free_port())
    }

    fn start_on(port: u16) -> SmtpServer {
        require_aiosmtpd();
        let dir = tempfile::tempdir().unwrap();
        let maildir = dir.path().join("Maildir");
        let mut child = Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python3 -m aiosmtpd");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                use std::io::Read;
                child.stderr.take().unwrap().read_to_string(&mut err).ok();
                panic!("aiosmtpd exited ({status}) before listening on {port}: {err}");
            }
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not listen on {port} within 20 s"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        SmtpServer {
            child,
            port,
            _dir: dir,
            maildir,
        }
    }

    /// Paths of the messages received so far.
    fn messages(&self) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(rd) = std::fs::read_dir(self.maildir.join(sub)) {
                out.extend(rd.map(|e| e.unwrap().path()));
            }
        }
        out.sort();
        out
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A received message, decoded by Python's email package (headers, and the
/// body with its transfer encoding undone).
#[derive(Debug)]
struct Received {
    to: String,
    from: String,
    subject: String,
    message_id: String,
    date: String,
    rcpt_to: String,
    body: String,
}

fn read_message(path: &Path) -> Received {
    let script = r#"
import email, email.policy, json, sys
m = email.message_from_binary_file(open(sys.argv[1], 'rb'), policy=email.policy.default)
print(json.dumps({
  'to': str(m['To']), 'from': str(m['From']), 'subject': str(m['Subject']),
  'message_id': str(m['Message-ID']), 'date': str(m['Date']), 'rcpt_to': str(m['X-RcptTo']),
  'body': m.get_body(preferencelist=('plain',)).get_content(),
}))
"#;
    let out = Command::new("python3").args(["-c", script]).arg(path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = |k: &str| v[k].as_str().unwrap().to_string();
    Received {
        to: s("to"),
        from: s("from"),
        subject: s("subject"),
        message_id: s("message_id"),
        date: s("date"),
        rcpt_to: s("rcpt_to"),
        body: s("body"),
    }
}

fn config(port: u16) -> SmtpConfig {
    let mut c = SmtpConfig::plain(
        "127.0.0.1",
        port,
        "Hale General Hospital <appointments@hale.example>",
        "hale.example",
    );
    c.reply_to = Some("Outpatient Bookings <bookings@hale.example>".into());
    c.step_timeout = Duration::from_secs(10);
    c
}

fn adapter(port: u16) -> Arc<SmtpAdapter> {
    Arc::new(SmtpAdapter::new(config(port), sender()).unwrap())
}

fn policy() -> WorkerPolicy {
    let mut p = WorkerPolicy::new("node-1");
    p.concurrency = 1;
    p.retry.jitter_permille = 0;
    p
}

#[tokio::test]
async fn email_arrives_with_the_new_time_and_a_message_id_from_the_key() {
    let server = SmtpServer::start();
    let a = adapter(server.port);
    let mut it = item("comm-mail-1", Channel::Email);
    it.recipient.name = "Zoë Brontë".into();
    let now = uk("2026-10-05", 11, 0);
    let receipt = a.send(&it, Channel::Email, now).await.expect("sent");
    assert_eq!(receipt.provider, "smtp");
    assert_eq!(receipt.id.as_deref(), Some("<hale-notify.comm-mail-1@hale.example>"));
    assert!(receipt.detail.contains("250"), "{}", receipt.detail);

    let msgs = server.messages();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    let m = read_message(&msgs[0]);
    assert_eq!(m.rcpt_to, "ada.okafor@example.org");
    assert_eq!(m.to, "Zoë Brontë <ada.okafor@example.org>");
    assert_eq!(m.from, "Hale General Hospital <appointments@hale.example>");
    assert_eq!(m.message_id, "<hale-notify.comm-mail-1@hale.example>");
    assert_eq!(
        m.subject,
        format!("Hale General Hospital: your appointment has been rearranged to {NEW_TIME}")
    );
    assert!(m.date.contains("5 Oct 2026"), "{}", m.date);
    let body = squash(&m.body);
    for want in [
        "Dear Zoë Brontë,",
        NEW_TIME,
        OLD_TIME,
        "Cardiology outpatient clinic",
        "Outpatients B, Royal Infirmary",
        "0141 496 0000",
        "comm-mail-1",
    ] {
        assert!(body.contains(want), "body lacks {want:?}: {body}");
    }
}

#[tokio::test]
async fn worker_retries_until_the_smtp_server_is_up() {
    let port = free_port();
    let clock = ManualClock::at(uk("2026-10-05", 11, 0));
    let outbox = MemOutbox::new([item("comm-mail-2", Channel::Email)]);
    let adapters = Adapters {
        email: Some(adapter(port)),
        ..Default::default()
    };
    let worker = Worker::new(outbox.clone(), adapters, policy(), clock.clone()).unwrap();
    let stop = Default::default();

    // Nothing listening: connect fails, nothing can have been sent, so retry.
    let r = worker.run_pass(&stop).await;
    assert_eq!(r.retry_scheduled, 1, "{r:?}");
    let it = outbox.get("comm-mail-2");
    assert_eq!(it.attempts, 1);
    assert!(!it.maybe_sent);
    let first_retry = it.next_attempt_ms.unwrap();
    assert_eq!(first_retry, uk("2026-10-05", 11, 2), "2 minutes");

    // Still down at the retry: backoff doubles.
    clock.set(first_retry);
    let r = worker.run_pass(&stop).await;
    assert_eq!(r.retry_scheduled, 1, "{r:?}");
    let it = outbox.get("comm-mail-2");
    assert_eq!(it.attempts, 2);
    assert_eq!(it.next_attempt_ms, Some(first_retry + 4 * 60_000));

    // Up, but the retry is not due yet: nothing happens.
    let server = SmtpServer::start_on(port);
    clock.advance_ms(60_000);
    let r = worker.run_pass(&stop).await;
    assert_eq!((r.fetched, r.recorded()), (0, 0), "{r:?}");
    assert!(server.messages().is_empty());

    // Due: sent, recorded, exactly one message.
    clock.set(first_retry + 4 * 60_000);
    let r = worker.run_pass(&stop).await;
    assert_eq!(r.sent, 1, "{r:?}");
    let it = outbox.get("comm-mail-2");
    assert_eq!(it.state, ItemState::Completed);
    assert_eq!(it.attempts, 3);
    let outcome = outbox.outcomes("comm-mail-2").pop().unwrap();
    assert_eq!(outcome.fhir_status(), "completed");
    let OutcomeStatus::Sent { receipt } = outcome.status else {
        panic!("{outcome:?}")
    };
    assert_eq!(receipt.id.as_deref(), Some("<hale-notify.comm-mail-2@hale.example>"));
    assert_eq!(server.messages().len(), 1);

    // Nothing more to do.
    clock.advance_ms(24 * 3600 * 1000);
    let r = worker.run_pass(&stop).await;
    assert_eq!(r.fetched, 0);
    assert_eq!(server.messages().len(), 1);
}

#[tokio::test]
async fn a_crash_after_sending_is_not_resent_but_listed_for_a_manual_check() {
    let server = SmtpServer::start();
    let start = uk("2026-10-05", 11, 0);
    let clock = ManualClock::at(start);
    let outbox = MemOutbox::new([item("comm-mail-3", Channel::Email), {
        let mut orphan = item("comm-mail-4", Channel::Email);
        orphan.appointment.start_ms += 3_600_000;
        orphan
    }]);
    let adapters = Adapters {
        email: Some(adapter(server.port)),
        ..Default::default()
    };
    let p = policy();
    let stale = p.claim_stale_after.as_millis() as i64;
    let worker = Worker::new(outbox.clone(), adapters.clone(), p.clone(), clock.clone()).unwrap();
    let stop = Default::default();

    // comm-mail-4: a worker claimed it and died before (or while) sending.
    let orphan = outbox.get("comm-mail-4");
    let claim = hale_notify::Claim {
        id: "dead-worker-claim".into(),
        worker: "node-2".into(),
        at_ms: start - 1000,
        channel: Channel::Email,
        attempt: 1,
    };
    hale_notify::Outbox::claim(&*outbox, &orphan, &claim).await.unwrap();

    // comm-mail-3: sent, then the process "crashes" before recording.
    outbox.fail_records.store(1, std::sync::atomic::Ordering::SeqCst);
    let r = worker.run_pass(&stop).await;
    assert_eq!(r.store_errors, 1, "{r:?}");
    assert_eq!(server.messages().len(), 1);
    assert_eq!(outbox.get("comm-mail-3").state, ItemState::InProgress);

    // A restarted worker, before the claims are stale: leaves both alone.
    let restarted = Worker::new(outbox.clone(), adapters, p, clock.clone()).unwrap();
    clock.set(start + stale / 2);
    let r = restarted.run_pass(&stop).await;
    assert_eq!(r.recorded(), 0, "{r:?}");

    // After: neither is resent; both go to staff as "delivery unknown".
    clock.set(start + stale + 1);
    let r = restarted.run_pass(&stop).await;
    assert_eq!(r.waiting_for_staff, 2, "{r:?}");
    assert_eq!(server.messages().len(), 1, "nothing sent twice");
    for id in ["comm-mail-3", "comm-mail-4"] {
        let it = outbox.get(id);
        let ItemState::WaitingForStaff { reason, detail } = &it.state else {
            panic!("{it:?}")
        };
        assert_eq!(*reason, StaffReason::DeliveryUnknown);
        assert!(detail.contains(&format!("<hale-notify.{id}@hale.example>")), "{detail}");
        assert_eq!(outbox.outcomes(id).pop().unwrap().fhir_status(), "on-hold");
    }
    let lists = staff_lists(&outbox.all());
    let ids: Vec<&str> = lists
        .check_delivery
        .iter()
        .map(|e| e.communication_id.as_str())
        .collect();
    assert_eq!(ids, ["comm-mail-3", "comm-mail-4"]);
    assert!(lists.phone_calls.is_empty() && lists.no_contact_details.is_empty());

    // And they stay put.
    clock.advance_ms(24 * 3600 * 1000);
    assert_eq!(restarted.run_pass(&stop).await.fetched, 0);
    assert_eq!(server.messages().len(), 1);
}

#[tokio::test]
async fn a_patient_without_an_email_address_is_not_retried() {
    let server = SmtpServer::start();
    let clock = ManualClock::at(uk("2026-10-05", 11, 0));
    let mut it = item("comm-mail-5", Channel::Email);
    it.recipient.email = None;
    let outbox = MemOutbox::new([it]);
    let adapters = Adapters {
        email: Some(adapter(server.port)),
        ..Default::default()
    };
    let worker = Worker::new(outbox.clone(), adapters, policy(), clock).unwrap();
    let r = worker.run_pass(&Default::default()).await;
    assert_eq!(r.failed, 1, "{r:?}");
    assert!(server.messages().is_empty());
    let lists = staff_lists(&outbox.all());
    assert_eq!(lists.phone_calls.len(), 1, "has a phone, so staff call: {lists:?}");
    assert!(lists.phone_calls[0].reason.contains("no email address"));
}
