//! The worker with letters written to a real directory (the in-memory outbox
//! is the only fake): letters that still arrive in time, fallbacks when they
//! no longer would, staff lists, backoff to giving up, a crash after writing,
//! two workers racing, and shutdown.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use hale_notify::staff::to_csv;
use hale_notify::{
    letter_in_time, run_worker, staff_lists, Adapters, Channel, ItemState, LetterDirectory, OutcomeStatus, StaffReason,
    Worker, WorkerPolicy,
};
use hale_sched::letters::{ContactPolicy, Postage};

const SECOND: Channel = Channel::Letter {
    postage: Postage::Second,
};

fn policy() -> WorkerPolicy {
    let mut p = WorkerPolicy::new("node-1");
    p.concurrency = 1;
    p.retry.jitter_permille = 0;
    p
}

fn letters(dir: &std::path::Path) -> Adapters {
    Adapters {
        letter: Some(Arc::new(LetterDirectory::new(dir, sender()).unwrap())),
        ..Default::default()
    }
}

fn files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn a_letter_that_arrives_in_time_is_written_once() {
    let dir = tempfile::tempdir().unwrap();
    // Monday 5 Oct 2026 11:00: printed that day, dispatched Tue, second class Thu 8 Oct;
    // the appointment is Tue 13 Oct, margin 2 days: in time.
    let clock = ManualClock::at(uk("2026-10-05", 11, 0));
    assert!(letter_in_time(
        clock_now(&clock),
        Postage::Second,
        uk("2026-10-13", 9, 30),
        &ContactPolicy::default()
    ));
    let outbox = MemOutbox::new([item("comm-l1", SECOND)]);
    let worker = Worker::new(outbox.clone(), letters(dir.path()), policy(), clock.clone()).unwrap();
    let stop = Default::default();
    let r = worker.run_pass(&stop).await;
    assert_eq!(r.sent, 1, "{r:?}");
    assert_eq!(files(dir.path()), ["comm-l1.json", "comm-l1.pdf"]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("comm-l1.json")).unwrap()).unwrap();
    assert_eq!(manifest["postage"], "second");
    assert_eq!(manifest["address_lines"][0], "Ada Okafor");
    assert_eq!(manifest["address_lines"][4], "G12 9UX");
    let o = outbox.outcomes("comm-l1").pop().unwrap();
    assert_eq!((o.channel, o.attempts, o.fhir_status()), (SECOND, 1, "completed"));

    clock.advance_ms(3_600_000);
    assert_eq!(worker.run_pass(&stop).await.fetched, 0);
    assert_eq!(files(dir.path()).len(), 2);
}

fn clock_now(c: &ManualClock) -> i64 {
    hale_notify::Clock::now_ms(c)
}

#[tokio::test]
async fn a_letter_that_would_now_arrive_too_late_falls_back() {
    let dir = tempfile::tempdir().unwrap();
    // Thursday 8 Oct 2026 16:00, appointment Tue 13 Oct: second class printed Thu,
    // dispatched Fri, delivered Mon 12 (1 day before: too late for a 2-day margin);
    // first class delivered Sat 10 (3 days before: in time).
    let clock = ManualClock::at(uk("2026-10-08", 16, 0));
    let mut phone_only = item("comm-l3", SECOND);
    phone_only.recipient.mobile = None;
    phone_only.recipient.email = None;
    // Mon 12 Oct: first class (Sat 10) is exactly the 2-day margin before it.
    phone_only.appointment.start_ms = uk("2026-10-12", 9, 0);
    let mut no_contact = item("comm-l4", SECOND);
    no_contact.recipient.mobile = None;
    no_contact.recipient.email = None;
    no_contact.recipient.phone = None;
    no_contact.appointment.start_ms = uk("2026-10-09", 14, 0);
    let outbox = MemOutbox::new([item("comm-l2", SECOND), phone_only, no_contact]);
    let worker = Worker::new(outbox.clone(), letters(dir.path()), policy(), clock.clone()).unwrap();
    let r = worker.run_pass(&Default::default()).await;
    assert_eq!((r.sent, r.waiting_for_staff), (2, 1), "{r:?}");

    // Upgraded to first class.
    let o = outbox.outcomes("comm-l2").pop().unwrap();
    assert_eq!(
        o.channel,
        Channel::Letter {
            postage: Postage::First
        }
    );
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("comm-l2.json")).unwrap()).unwrap();
    assert_eq!(manifest["postage"], "first");

    // comm-l3 (Mon 12 Oct) also goes first class; comm-l4's (Fri 9 Oct) cannot be
    // reached by post in time and it has no other contact: staff list.
    assert!(letter_in_time(
        clock_now(&clock),
        Postage::First,
        uk("2026-10-12", 9, 0),
        &ContactPolicy::default()
    ));
    let o3 = outbox.outcomes("comm-l3").pop().unwrap();
    assert_eq!(
        o3.channel,
        Channel::Letter {
            postage: Postage::First
        }
    );
    let o4 = outbox.outcomes("comm-l4").pop().unwrap();
    assert_eq!(o4.channel, Channel::StaffList);
    assert!(matches!(
        o4.status,
        OutcomeStatus::WaitingForStaff {
            reason: StaffReason::NoContactDetails,
            ..
        }
    ));
    assert!(!dir.path().join("comm-l4.pdf").exists());
}

#[tokio::test]
async fn a_late_letter_for_a_patient_with_a_landline_goes_on_the_phone_list() {
    let dir = tempfile::tempdir().unwrap();
    // Friday 9 Oct 2026 18:00, after the print run; appointment Tue 13 Oct.
    // Printed Mon 12, dispatched Tue 13: no class arrives in time.
    let clock = ManualClock::at(uk("2026-10-09", 18, 0));
    let mut it = item("comm-p1", SECOND);
    it.recipient.mobile = None;
    it.recipient.email = None;
    let outbox = MemOutbox::new([it]);
    let worker = Worker::new(outbox.clone(), letters(dir.path()), policy(), clock).unwrap();
    let r = worker.run_pass(&Default::default()).await;
    assert_eq!(r.waiting_for_staff, 1, "{r:?}");
    assert!(files(dir.path()).is_empty(), "no letter written");
    let it = outbox.get("comm-p1");
    assert!(
        matches!(
            &it.state,
            ItemState::WaitingForStaff {
                reason: StaffReason::PhoneCall,
                ..
            }
        ),
        "{it:?}"
    );
    let lists = staff_lists(&outbox.all());
    assert_eq!(lists.phone_calls.len(), 1);
    assert_eq!(lists.phone_calls[0].phones, ["0141 496 0999"]);
}

#[tokio::test]
async fn phone_call_and_staff_list_items_are_not_sent_but_listed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(uk("2026-10-05", 11, 0));
    let mut call = item("comm-s1", Channel::PhoneCall);
    call.recipient.mobile = None;
    call.recipient.email = None;
    call.recipient.name = "Ben \"Benny\" Adams, Jr".into();
    call.appointment.start_ms = uk("2026-10-07", 14, 0);
    let mut nobody = item("comm-s2", Channel::StaffList);
    nobody.recipient = hale_notify::Recipient {
        patient_id: "pat-s2".into(),
        name: "Cara Doyle".into(),
        ..Default::default()
    };
    let mut passed = item("comm-s3", Channel::Sms);
    passed.appointment.start_ms = uk("2026-10-05", 10, 0);
    let sms_without_adapter = item("comm-s4", Channel::Sms);
    let outbox = MemOutbox::new([call, nobody, passed, sms_without_adapter]);

    // Before the worker runs, the lists already show the staff channels.
    let early = staff_lists(&outbox.all());
    assert_eq!(early.phone_calls.len(), 1);
    assert_eq!(early.no_contact_details.len(), 1);

    let worker = Worker::new(outbox.clone(), letters(dir.path()), policy(), clock).unwrap();
    let r = worker.run_pass(&Default::default()).await;
    assert_eq!((r.waiting_for_staff, r.failed, r.sent), (3, 1, 0), "{r:?}");
    assert!(files(dir.path()).is_empty());

    let status = |id: &str| outbox.outcomes(id).pop().unwrap().fhir_status();
    assert_eq!(status("comm-s1"), "on-hold");
    assert_eq!(status("comm-s2"), "on-hold");
    assert_eq!(status("comm-s3"), "not-done");
    assert_eq!(status("comm-s4"), "on-hold");
    assert!(matches!(
        outbox.get("comm-s4").state,
        ItemState::WaitingForStaff {
            reason: StaffReason::ChannelUnavailable,
            ..
        }
    ));

    let lists = staff_lists(&outbox.all());
    let ids = |l: &[hale_notify::StaffEntry]| l.iter().map(|e| e.communication_id.clone()).collect::<Vec<_>>();
    // Soonest appointment first: s3 (5 Oct, missed), s1 (7 Oct), s4 (13 Oct).
    assert_eq!(ids(&lists.phone_calls), ["comm-s3", "comm-s1", "comm-s4"]);
    assert_eq!(ids(&lists.no_contact_details), ["comm-s2"]);
    assert!(lists.check_delivery.is_empty());
    assert_eq!(lists.len(), 4);
    assert!(lists.phone_calls[0].reason.contains("appointment started"));
    assert_eq!(lists.phone_calls[1].appointment, "Wednesday 7 October 2026 at 2:00pm");
    assert_eq!(
        lists.phone_calls[1].previous_appointment.as_deref(),
        Some("Monday 5 October 2026 at 10:00am")
    );
    assert_eq!(
        lists.phone_calls[1].address.as_deref(),
        Some("Flat 2/1, 14 Hyndland Road, Glasgow, G12 9UX")
    );

    let csv = to_csv(&lists.phone_calls);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4);
    assert!(lines[0].starts_with("appointment,name,nhs_number,phones"));
    assert!(
        lines[2].starts_with(
            "Wednesday 7 October 2026 at 2:00pm,\"Ben \"\"Benny\"\" Adams, Jr\",999 123 4567,0141 496 0999,"
        ),
        "{}",
        lines[2]
    );
}

#[tokio::test]
async fn backoff_then_give_up_when_letters_cannot_be_written() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("letters");
    let adapters = letters(&out);
    // The print directory disappears and a file takes its place: every write fails.
    std::fs::remove_dir(&out).unwrap();
    std::fs::write(&out, b"not a directory").unwrap();

    let t0 = uk("2026-10-01", 9, 0);
    let clock = ManualClock::at(t0);
    let outbox = MemOutbox::new([item("comm-b1", SECOND)]);
    let mut p = policy();
    p.retry.base_delay_ms = 60_000;
    p.retry.max_delay_ms = 5 * 60_000;
    let worker = Worker::new(outbox.clone(), adapters, p.clone(), clock.clone()).unwrap();
    let stop = Default::default();
    let mut gaps = Vec::new();
    loop {
        let r = worker.run_pass(&stop).await;
        assert_eq!(r.recorded(), 1, "{r:?}");
        let it = outbox.get("comm-b1");
        match it.next_attempt_ms {
            Some(next) => {
                gaps.push((next - clock_now(&clock)) / 60_000);
                // Half-way there: not due.
                clock.advance_ms((next - clock_now(&clock)) / 2);
                assert_eq!(worker.run_pass(&stop).await.recorded(), 0);
                clock.set(next);
            }
            None => break,
        }
    }
    assert_eq!(gaps, [1, 2, 4, 5, 5], "doubling, capped at 5 minutes");
    let it = outbox.get("comm-b1");
    assert_eq!(it.attempts, p.retry.max_attempts);
    let ItemState::Failed { error } = &it.state else {
        panic!("{it:?}")
    };
    assert!(error.starts_with("gave up after 6 attempts"), "{error}");
    let retries = outbox
        .outcomes("comm-b1")
        .iter()
        .filter(|o| o.fhir_status() == "preparation")
        .count();
    assert_eq!(retries, 5);
}

#[tokio::test]
async fn a_crash_after_writing_a_letter_is_found_and_not_rewritten() {
    let dir = tempfile::tempdir().unwrap();
    let t0 = uk("2026-10-05", 11, 0);
    let clock = ManualClock::at(t0);
    let outbox = MemOutbox::new([item("comm-x1", SECOND)]);
    let p = policy();
    let stale = p.claim_stale_after.as_millis() as i64;
    outbox.fail_records.store(1, Ordering::SeqCst);
    let worker = Worker::new(outbox.clone(), letters(dir.path()), p.clone(), clock.clone()).unwrap();
    let r = worker.run_pass(&Default::default()).await;
    assert_eq!(r.store_errors, 1);
    let pdf = dir.path().join("comm-x1.pdf");
    let written = std::fs::metadata(&pdf).unwrap().modified().unwrap();

    let restarted = Worker::new(outbox.clone(), letters(dir.path()), p, clock.clone()).unwrap();
    clock.set(t0 + stale + 1);
    let r = restarted.run_pass(&Default::default()).await;
    assert_eq!(r.sent, 1, "{r:?}");
    let OutcomeStatus::Sent { receipt } = outbox.outcomes("comm-x1").pop().unwrap().status else {
        panic!()
    };
    assert!(receipt.detail.contains("not written again"), "{}", receipt.detail);
    assert_eq!(std::fs::metadata(&pdf).unwrap().modified().unwrap(), written);
    assert_eq!(files(dir.path()), ["comm-x1.json", "comm-x1.pdf"]);
}

#[tokio::test]
async fn two_workers_racing_send_each_letter_once() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(uk("2026-10-05", 11, 0));
    let items: Vec<_> = (0..40).map(|i| item(&format!("comm-race-{i:02}"), SECOND)).collect();
    let outbox = MemOutbox::new(items);
    let mut p1 = policy();
    p1.concurrency = 4;
    let mut p2 = p1.clone();
    p2.worker_id = "node-2".into();
    let w1 = Worker::new(outbox.clone(), letters(dir.path()), p1, clock.clone()).unwrap();
    let w2 = Worker::new(outbox.clone(), letters(dir.path()), p2, clock.clone()).unwrap();
    let (s1, s2) = (Default::default(), Default::default());
    let (r1, r2) = tokio::join!(w1.run_pass(&s1), w2.run_pass(&s2));
    assert_eq!(r1.sent + r2.sent, 40, "{r1:?} {r2:?}");
    assert_eq!(outbox.records.lock().unwrap().len(), 40, "each recorded once");
    let claims = outbox.claims.lock().unwrap().len();
    assert_eq!(claims, 40, "each claimed once; the loser of a race gets a conflict");
    assert_eq!(files(dir.path()).len(), 80);
}

#[tokio::test]
async fn run_worker_delivers_then_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::at(uk("2026-10-05", 11, 0));
    let items: Vec<_> = (0..7).map(|i| item(&format!("comm-run-{i}"), SECOND)).collect();
    let outbox = MemOutbox::new(items);
    let mut p = policy();
    p.batch_size = 3;
    p.poll_interval = Duration::from_millis(20);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let o2 = outbox.clone();
    let handle = tokio::spawn(run_worker(outbox.clone(), letters(dir.path()), p, clock, async move {
        let _ = rx.await;
    }));
    // Wait until everything is delivered, then shut down.
    for _ in 0..500 {
        if o2.all().iter().all(|i| i.state == ItemState::Completed) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tx.send(()).unwrap();
    let total = tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("stops promptly")
        .unwrap()
        .unwrap();
    assert_eq!(total.sent, 7, "{total:?}");
    assert_eq!(files(dir.path()).len(), 14);
}

#[test]
fn an_invalid_policy_is_refused() {
    let outbox = MemOutbox::new([]);
    let mut p = policy();
    p.claim_stale_after = Duration::from_secs(1);
    let e = Worker::new(outbox, Adapters::default(), p, ManualClock::at(0))
        .err()
        .unwrap();
    assert!(e.contains("claim_stale_after"), "{e}");
}
