//! Backups of a running raft node: taken under write load, restored to the
//! latest point, to an index and to a time, verified, and refused when damaged.

use hale_backup::archive::{Archiver, Step};
use hale_backup::restore::{self, Target};
use hale_backup::{Catalog, Identities, Recipients};
use hale_raft::{RaftNode, RaftSettings};
use hale_store::command::{Command, CommandKind, WriteOp};
use hale_store::Actor;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

fn create(i: u64, family: &str, time_ms: i64) -> Command {
    let id = format!("p{i}");
    Command {
        time_ms,
        actor: Actor::system(),
        kind: CommandKind::Write(WriteOp::Create {
            rtype: "Patient".into(),
            id: id.clone(),
            resource: json!({"resourceType": "Patient", "id": id, "name": [{"family": family}]}),
            if_none_exist: None,
        }),
        references: Default::default(),
    }
}

async fn start(data: &Path) -> Arc<RaftNode> {
    start_with(data, RaftSettings::default()).await
}

async fn start_with(data: &Path, settings: RaftSettings) -> Arc<RaftNode> {
    let settings = RaftSettings {
        node_id: 1,
        bootstrap_single: true,
        ..settings
    };
    let node = RaftNode::start(data, settings, "http://127.0.0.1:9".into())
        .await
        .expect("start a node");
    for _ in 0..200 {
        if node.metrics().current_leader == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(node.metrics().current_leader, Some(1), "a cluster of one leads");
    node
}

fn keys() -> (Recipients, Identities) {
    let id = age::x25519::Identity::generate();
    let r = Recipients::parse(&[id.to_public().to_string()]).unwrap();
    (r, Identities::from_keys(vec![id]))
}

/// Archive everything the node has applied.
fn archive_all(a: &mut Archiver, node: &RaftNode) {
    loop {
        match a.step(node.applied_index()).expect("archive step") {
            Step::Idle => return,
            Step::Wrote(_) => {}
            other => panic!("archive: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_under_load_restores_to_any_point_and_refuses_damage() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    let backups = tmp.path().join("backups");
    let (recipients, ids) = keys();
    let node = start(&data).await;

    // 1. Writes go on while the first base backup is copied.
    let writer = {
        let node = node.clone();
        tokio::spawn(async move {
            for i in 0..200u64 {
                node.propose(create(i, "Early", 1_000 + i as i64)).await.expect("write");
            }
        })
    };
    while node.applied_index() < 50 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let base1 = {
        let (d, b, r) = (data.clone(), backups.clone(), recipients.clone());
        tokio::task::spawn_blocking(move || hale_backup::base::take(&d, &b, &r))
            .await
            .unwrap()
            .expect("base backup under load")
    };
    writer.await.unwrap();
    let mut archiver = Archiver::open(&data, &backups, recipients.clone()).unwrap();
    archive_all(&mut archiver, &node);

    // The last moment before the mistake: its index, time and state.
    let good_index = node.applied_index();
    let good_hash = node.sm.content_hash().unwrap();
    let good_time_ms = 5_000;
    // 2. A mistaken bulk update, stamped after that time.
    for i in 0..50u64 {
        let cmd = Command {
            time_ms: 6_000 + i as i64,
            actor: Actor::system(),
            kind: CommandKind::Write(WriteOp::Update {
                rtype: "Patient".into(),
                id: format!("p{i}"),
                resource: json!({"resourceType": "Patient", "id": format!("p{i}"), "name": [{"family": "Overwritten"}]}),
                if_match: None,
            }),
            references: Default::default(),
        };
        node.propose(cmd).await.expect("bulk update");
    }
    // A second base after the mistake, and the archive up to date.
    let base2 = {
        let (d, b, r) = (data.clone(), backups.clone(), recipients.clone());
        tokio::task::spawn_blocking(move || hale_backup::base::take(&d, &b, &r))
            .await
            .unwrap()
            .unwrap()
    };
    assert!(base2.last_log_index > base1.last_log_index);
    archive_all(&mut archiver, &node);
    let latest_index = node.applied_index();
    let latest_hash = node.sm.content_hash().unwrap();

    // Every file is ciphertext: no family name appears in the backup directory.
    for f in walk(&backups) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(
            !bytes.windows(5).any(|w| w == b"Early"),
            "{} holds plaintext",
            f.display()
        );
    }

    // 3. Restore to the latest point: the node's state exactly.
    let r = restore::restore(&backups, &ids, &tmp.path().join("latest"), Target::Latest)
        .await
        .unwrap();
    assert_eq!(r.last_log_index, Some(latest_index));
    assert_eq!(r.content_hash, latest_hash, "latest restore equals the node");

    // 4. Point in time, by time: before the bulk update, every earlier write there.
    let r = restore::restore(&backups, &ids, &tmp.path().join("by-time"), Target::Time(good_time_ms))
        .await
        .unwrap();
    assert_eq!(r.base_file, base1.file, "the base taken before the mistake");
    assert_eq!(r.last_log_index, Some(good_index));
    assert_eq!(r.content_hash, good_hash, "restored to just before the bulk update");
    assert_eq!(r.stopped_before_index, Some(good_index + 1));
    // And by index, the same state.
    let r = restore::restore(&backups, &ids, &tmp.path().join("by-index"), Target::Index(good_index))
        .await
        .unwrap();
    assert_eq!(r.content_hash, good_hash);

    // 5. The restored directory starts as a new cluster of one and takes writes.
    restore::reform(&tmp.path().join("by-time"), 1, "dc-1").await.unwrap();
    {
        let restored = start(&tmp.path().join("by-time")).await;
        assert!(restored.applied_index() >= good_index);
        let (_, applied) = restored
            .propose(create(9_999, "AfterRestore", 9_000))
            .await
            .expect("write after restore");
        assert!(
            matches!(&applied, hale_store::apply::Applied::Ops(ops) if ops.iter().all(|o| o.is_ok())),
            "{applied:?}"
        );
        restored.shutdown().await;
    }

    // 6. Verification passes, and proves the archive by replaying base 1 to base 2.
    let v = restore::verify(&backups, &ids, tmp.path()).await.unwrap();
    assert!(v.ok, "{v:?}");
    assert_eq!(v.replayed_from_index, base1.last_log_index);
    assert_eq!(v.archive_last_index, Some(latest_index));
    assert_eq!(Catalog::load(&backups).unwrap().last_ok_verification(), Some(&v));

    // 7. A damaged byte in the newest base fails verification and restore, clearly.
    let c = Catalog::load(&backups).unwrap();
    let path = c.base_path(c.newest_base().unwrap());
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let v = restore::verify(&backups, &ids, tmp.path()).await.unwrap();
    assert!(!v.ok);
    assert!(
        v.problems
            .iter()
            .any(|p| p.contains("damaged") && p.contains(&base2.file)),
        "{:?}",
        v.problems
    );
    let e = restore::restore(&backups, &ids, &tmp.path().join("damaged"), Target::Latest)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("damaged"), "{e}");
    // A damaged segment is named too.
    let seg = c.segments.last().unwrap();
    let path = c.segment_path(seg);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&path, &bytes).unwrap();
    let v = restore::verify(&backups, &ids, tmp.path()).await.unwrap();
    assert!(v.problems.iter().any(|p| p.contains(&seg.file)), "{:?}", v.problems);

    // 8. A wrong key is told apart from damage.
    let (_, other) = keys();
    let e = restore::restore(
        &backups,
        &other,
        &tmp.path().join("wrong-key"),
        Target::Index(good_index),
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("none of the given identities"), "{e}");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_are_written_once_and_pruning_is_a_separate_step() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    let backups = tmp.path().join("backups");
    let (recipients, ids) = keys();
    let node = start(&data).await;
    let mut archiver = Archiver::open(&data, &backups, recipients.clone()).unwrap();
    assert!(matches!(
        archiver.step(node.applied_index()).unwrap(),
        Step::NeedsBase { .. }
    ));
    for round in 0..3u64 {
        for i in 0..20 {
            node.propose(create(round * 100 + i, "Kept", 1_000)).await.unwrap();
        }
        hale_backup::base::take(&data, &backups, &recipients).unwrap();
        archive_all(&mut archiver, &node);
    }
    // Every file the node wrote is read-only to it from now on: nothing it
    // does later needs to change or remove one.
    let before: Vec<_> = walk(&backups);
    for f in &before {
        let mut p = std::fs::metadata(f).unwrap().permissions();
        p.set_readonly(true);
        std::fs::set_permissions(f, p).unwrap();
    }
    for i in 0..20 {
        node.propose(create(900 + i, "Later", 2_000)).await.unwrap();
    }
    hale_backup::base::take(&data, &backups, &recipients).unwrap();
    archive_all(&mut archiver, &node);
    let v = restore::verify(&backups, &ids, tmp.path()).await.unwrap();
    assert!(v.ok, "{v:?}");
    for f in &before {
        assert!(f.exists(), "{} was removed", f.display());
    }
    // Pruning keeps the newest two bases and the archive from the older of them.
    let c = Catalog::load(&backups).unwrap();
    assert_eq!(c.bases.len(), 4);
    let r = restore::prune(&backups, 2).unwrap();
    assert_eq!(r.bases_removed, 2);
    let c = Catalog::load(&backups).unwrap();
    assert_eq!(c.bases.len(), 2);
    let r = restore::restore(&backups, &ids, &tmp.path().join("after-prune"), Target::Latest)
        .await
        .unwrap();
    assert_eq!(r.content_hash, node.sm.content_hash().unwrap());
    assert!(restore::prune(&backups, 0).is_err(), "keep 0 is refused");
    node.shutdown().await;
}

/// The node purged log entries the archive had not copied (its storage was
/// away): the archive says it needs a base, continues from the new one, and
/// the restorable span shows the gap rather than hiding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_the_archive_asks_for_a_new_base_and_is_never_silent() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("node");
    let backups = tmp.path().join("backups");
    let (recipients, ids) = keys();
    let node = start_with(
        &data,
        RaftSettings {
            snapshot_entries_since_last: 40,
            entries_kept_after_snapshot: 0,
            ..RaftSettings::default()
        },
    )
    .await;
    for i in 0..10 {
        node.propose(create(i, "Before", 1_000)).await.unwrap();
    }
    let first = hale_backup::base::take(&data, &backups, &recipients).unwrap();
    let mut archiver = Archiver::open(&data, &backups, recipients.clone()).unwrap();
    archive_all(&mut archiver, &node);
    let archived = node.applied_index();
    // The archive is away while the node writes and snapshots past it.
    for i in 10..200 {
        node.propose(create(i, "Unarchived", 2_000)).await.unwrap();
    }
    let purged_past = |node: &RaftNode| {
        hale_raft::log_store::LogStore::first_index(node.sm.data_dir())
            .unwrap()
            .is_some_and(|f| f > archived + 1)
    };
    for _ in 0..200 {
        if purged_past(&node) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(purged_past(&node), "the log was purged past the archive");
    match archiver.step(node.applied_index()).unwrap() {
        Step::NeedsBase { next, log_first } => {
            assert_eq!(next, Some(archived + 1));
            assert!(log_first > next, "{log_first:?}");
        }
        other => panic!("expected NeedsBase, got {other:?}"),
    }
    let second = hale_backup::base::take(&data, &backups, &recipients).unwrap();
    archiver.reload().unwrap();
    assert_eq!(archiver.next_index(), second.last_log_index.map(|i| i + 1));
    for i in 200..220 {
        node.propose(create(i, "After", 3_000)).await.unwrap();
    }
    archive_all(&mut archiver, &node);
    let c = Catalog::load(&backups).unwrap();
    // From the first base the archive reaches only what it copied; from the second, the end.
    let first_index = first.last_log_index.unwrap();
    assert_eq!(c.archive_reach(first_index + 1).unwrap_or(first_index), archived);
    assert_eq!(
        c.archive_reach(second.last_log_index.unwrap() + 1),
        Some(node.applied_index())
    );
    // A point inside the gap cannot be restored, and the error says how far it gets.
    let e = restore::restore(&backups, &ids, &tmp.path().join("gap"), Target::Index(archived + 5))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("reaches index"), "{e}");
    let r = restore::restore(&backups, &ids, &tmp.path().join("latest"), Target::Latest)
        .await
        .unwrap();
    assert_eq!(r.content_hash, node.sm.content_hash().unwrap());
    node.shutdown().await;
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}
