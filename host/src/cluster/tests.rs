//! The state machine without a network: however Raft batches the committed entries, a node's records (and agents'
//! state) are the same bytes; a snapshot reproduces them on a node that never saw the entries; and a local writer
//! cannot fork them.

use super::machine::Machine;
use super::{Outcome, Proposal, TypeConfig};
use crate::db::{Db, EVENTS, OPS, REVOKED, STATE, STATE_USAGE};
use crate::events::{AppendError, EventLog, GroupCommit, LogStats};
use crate::kernel::{Op, Operation, StateChange};
use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, RaftSnapshotBuilder};
use redb::{ReadableDatabase, ReadableTable};
use serde_json::json;
use std::sync::Arc;

fn op(time_ms: u64, token: &str, op: Op) -> Operation {
    Operation { time_ms, token: token.into(), chain: Vec::new(), op }
}

fn entry(index: u64, operation: &Operation) -> Entry<TypeConfig> {
    Entry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Proposal { op: serde_json::to_string(operation).unwrap() }),
    }
}

/// A run, its observations, a revocation of its token (the next observation is rejected), its ending, and a blank
/// entry (a new leader's) in the middle.
fn log() -> Vec<Entry<TypeConfig>> {
    let mut ops = vec![op(
        1,
        "t",
        Op::StartRun {
            run_id: "r".into(),
            agent: "a".into(),
            task_id: None,
            detail: json!({}),
            rate: None,
            node: None,
        },
    )];
    for i in 0..12 {
        ops.push(op(2 + i, "t", Op::EmitObservation { run_id: "r".into(), kind: "k".into(), payload: json!(i) }));
    }
    ops.push(op(20, "local-cli", Op::RevokeToken { token_id: "t".into() }));
    ops.push(op(21, "t", Op::EmitObservation { run_id: "r".into(), kind: "k".into(), payload: json!("late") }));
    ops.push(op(22, "t", Op::CompleteRun { run_id: "r".into(), fuel: 7, detail: json!({}) }));
    // State written by a run and by the operator: the values travel in the entries and every node keeps them.
    ops.push(op(
        23,
        "s",
        Op::StartRun {
            run_id: "r3".into(),
            agent: "a".into(),
            task_id: None,
            detail: json!({}),
            rate: None,
            node: None,
        },
    ));
    let write = |run: &str, change: StateChange| Op::WriteState {
        run_id: run.into(),
        detail: json!({ "key": change.key }),
        change: Some(change),
    };
    ops.push(op(24, "s", write("r3", StateChange::set("k", b"v1"))));
    ops.push(op(25, "s", write("r3", StateChange::set("k2", b"v2"))));
    ops.push(op(26, "s", write("r3", StateChange::delete("k2"))));
    let by_operator = Op::OperatorWriteState {
        agent: "b".into(),
        detail: json!({}),
        change: Some(StateChange::set("k", b"from the operator")),
    };
    ops.push(op(27, "local-cli", by_operator));
    let mut entries: Vec<_> = ops.iter().enumerate().map(|(i, o)| entry(i as u64 + 1, o)).collect();
    entries.insert(5, Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), 0), payload: EntryPayload::Blank });
    for (i, e) in entries.iter_mut().enumerate() {
        e.log_id.index = i as u64 + 1;
    }
    entries
}

/// Every row of the replicated tables, as stored: operations, events, revocations, agents' state and its usage.
type Rows = (
    Vec<(u64, Vec<u8>)>,
    Vec<(u64, Vec<u8>)>,
    Vec<(String, u64)>,
    Vec<((String, String), Vec<u8>)>,
    Vec<(String, u64)>,
);

fn rows(db: &Db) -> Rows {
    let txn = db.redb().begin_read().unwrap();
    let u64_rows = |t: redb::ReadOnlyTable<u64, &'static [u8]>| {
        t.iter().unwrap().map(|r| r.unwrap()).map(|(k, v)| (k.value(), v.value().to_vec())).collect::<Vec<_>>()
    };
    let revoked = txn.open_table(REVOKED).unwrap();
    let revoked =
        revoked.iter().unwrap().map(|r| r.unwrap()).map(|(k, v)| (k.value().to_string(), v.value())).collect();
    let state = txn.open_table(STATE).unwrap();
    let state = state
        .iter()
        .unwrap()
        .map(|r| r.unwrap())
        .map(|(k, v)| ((k.value().0.to_string(), k.value().1.to_string()), v.value().to_vec()))
        .collect();
    let usage = txn.open_table(STATE_USAGE).unwrap();
    let usage = usage.iter().unwrap().map(|r| r.unwrap()).map(|(k, v)| (k.value().to_string(), v.value())).collect();
    (u64_rows(txn.open_table(OPS).unwrap()), u64_rows(txn.open_table(EVENTS).unwrap()), revoked, state, usage)
}

#[test]
fn every_batching_gives_the_same_records_and_a_snapshot_reproduces_them() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let open = |name: &str| {
            let db = Db::open(&dir.path().join(name)).unwrap();
            (Machine::open(db.clone(), "toka-test".into(), None, Arc::new(LogStats::default())).unwrap(), db)
        };
        let entries = log();
        let (mut one, one_db) = open("one");
        let all_at_once = one.apply(entries.clone()).await.unwrap();
        let (mut two, two_db) = open("two");
        let mut in_threes = Vec::new();
        for chunk in entries.chunks(3) {
            in_threes.extend(two.apply(chunk.to_vec()).await.unwrap());
        }
        assert_eq!(all_at_once, in_threes, "the same outcomes");
        assert_eq!(all_at_once[5], Outcome::None, "the blank entry is no operation");
        let late = &all_at_once[15];
        assert!(
            matches!(late, Outcome::Applied { rejected: Some(why), .. } if why.contains("revoked")),
            "the observation after the revocation is rejected: {late:?}"
        );
        assert_eq!(rows(&one_db), rows(&two_db), "byte-identical records");
        let (ops, events, revoked, state, usage) = rows(&one_db);
        assert_eq!((ops.len(), events.len(), revoked.len()), (21, 22, 1));
        let key = |agent: &str, key: &str| (agent.to_string(), key.to_string());
        assert_eq!(
            state,
            vec![(key("a", "k"), b"v1".to_vec()), (key("b", "k"), b"from the operator".to_vec())],
            "the values written, k2 deleted"
        );
        assert_eq!(usage, vec![("a".to_string(), 3), ("b".to_string(), 18)]);
        assert_eq!(crate::events::verify(&one_db).unwrap().first_bad, None);

        // A node that never saw the entries installs a snapshot and holds the same records.
        let snapshot = one.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert_eq!(snapshot.meta.last_log_id.map(|l| l.index), Some(entries.len() as u64));
        let (mut three, three_db) = open("three");
        three.install_snapshot(&snapshot.meta, snapshot.snapshot).await.unwrap();
        assert_eq!(rows(&three_db), rows(&one_db));
        assert_eq!(three.applied_state().await.unwrap(), one.applied_state().await.unwrap());
        // ... and goes on from there exactly as the others do (its kernel state is rebuilt from the tables).
        let next = entry(
            entries.len() as u64 + 1,
            &op(
                30,
                "u",
                Op::StartRun {
                    run_id: "r2".into(),
                    agent: "a".into(),
                    task_id: None,
                    detail: json!({}),
                    rate: None,
                    node: None,
                },
            ),
        );
        let on_one = one.apply(vec![next.clone()]).await.unwrap();
        assert_eq!(three.apply(vec![next]).await.unwrap(), on_one);
        assert_eq!(rows(&three_db), rows(&one_db));

        // A local writer on a node's database is refused: it would fork the node's chain.
        let local = EventLog::open(one_db.clone(), GroupCommit::default(), None).unwrap();
        let refused = local.submit(op(40, "u", Op::RevokeToken { token_id: "x".into() })).unwrap_err();
        assert!(
            matches!(&refused, AppendError::Invalid(why) if why.contains("belongs to a node of cluster toka-test"))
        );
        // Positive control: the same writer on a database that is no node's records it.
        let plain = EventLog::open(Db::open(&dir.path().join("plain")).unwrap(), GroupCommit::default(), None).unwrap();
        assert!(plain.submit(op(40, "u", Op::RevokeToken { token_id: "x".into() })).is_ok());
    });
}
