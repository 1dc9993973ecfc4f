//! What the pod tells about itself: liveness, readiness and the `/status` report. Each table's
//! coordinator writes its part every round; the HTTP handlers only read it.

use std::fmt::Debug;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::ids::{StreamArn, WorkerId};

/// A loop that has not finished a round for this long is stuck, and the pod should be restarted.
/// Generous, since one round can include slow AWS calls with their own retries.
const STUCK_AFTER: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Serialize)]
pub struct ShardStatus {
    /// The table whose stream the shard belongs to.
    pub table: String,
    pub shard_id: String,
    /// owned, unowned, waiting_for_parent or finished
    pub state: &'static str,
    pub owner: Option<String>,
    pub checkpoint: String,
    pub parent_shard_ids: Vec<String>,
    /// Only for the shards this pod owns.
    pub lag_seconds: Option<f64>,
    /// For a shard this pod runs: its worker's view, read when the report is asked for, so the
    /// checkpoint and lag are those of the last delivered page and not of the last round.
    #[serde(skip)]
    pub live: Option<Arc<dyn LiveShard>>,
}

/// What a running shard worker knows better than the coordinator's last round.
pub trait LiveShard: Debug + Send + Sync {
    /// The checkpoint last written to the lease table.
    fn checkpoint(&self) -> String;
    /// Age of the newest record processed; 0 when caught up.
    fn lag_seconds(&self) -> f64;
}

/// One table as its coordinator last saw it.
#[derive(Debug, Clone, Serialize)]
pub struct TableStatus {
    pub table: String,
    pub stream_arn: StreamArn,
    /// The first shard sync is done (stream and lease table were reachable).
    pub synced: bool,
    /// Live workers reading this table's stream, this pod included.
    pub workers: usize,
    pub leases_owned: usize,
    /// Where the table's records go, in the order they are tried.
    pub routes: Vec<RouteStatus>,
    #[serde(skip)]
    last_round: Instant,
}

/// One route of a table: its event type and its condition in words (none: every record).
#[derive(Debug, Clone, Serialize)]
pub struct RouteStatus {
    pub event_type: String,
    pub when: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub worker_id: WorkerId,
    pub ready: bool,
    /// Over all tables.
    pub leases_owned: usize,
    pub tables: Vec<TableStatus>,
    /// The shards of every table.
    pub shards: Vec<ShardStatus>,
}

#[derive(Debug)]
pub struct StatusBoard {
    /// SIGTERM came: not ready any more, before the leases are released.
    stopping: AtomicBool,
    report: RwLock<StatusReport>,
}

impl StatusBoard {
    /// `tables`: (table name, stream ARN) in the order their coordinators are numbered.
    pub fn new(worker_id: &WorkerId, tables: &[(String, StreamArn)]) -> StatusBoard {
        StatusBoard {
            stopping: AtomicBool::new(false),
            report: RwLock::new(StatusReport {
                worker_id: worker_id.clone(),
                ready: false,
                leases_owned: 0,
                tables: tables
                    .iter()
                    .map(|(table, stream_arn)| TableStatus {
                        table: table.clone(),
                        stream_arn: stream_arn.clone(),
                        synced: false,
                        workers: 0,
                        leases_owned: 0,
                        routes: Vec::new(),
                        last_round: Instant::now(),
                    })
                    .collect(),
                shards: Vec::new(),
            }),
        }
    }

    fn with_table<T>(&self, table: usize, f: impl FnOnce(&mut TableStatus) -> T) -> T {
        f(&mut self.report.write().expect("status lock poisoned").tables[table])
    }

    pub fn set_routes(&self, table: usize, routes: Vec<RouteStatus>) {
        self.with_table(table, |t| t.routes = routes);
    }

    pub fn set_synced(&self, table: usize) {
        self.with_table(table, |t| t.synced = true);
    }

    pub fn synced(&self, table: usize) -> bool {
        self.with_table(table, |t| t.synced)
    }

    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Every table synced, and no SIGTERM yet.
    pub fn ready(&self) -> bool {
        !self.stopping.load(Ordering::SeqCst)
            && self
                .report
                .read()
                .expect("status lock poisoned")
                .tables
                .iter()
                .all(|t| t.synced)
    }

    /// A coordinator calls this after every round, whatever the round's AWS calls returned:
    /// liveness is about the process, not about AWS or Nakadi being reachable.
    pub fn round_done(&self, table: usize) {
        self.with_table(table, |t| t.last_round = Instant::now());
    }

    /// Every table's coordinator finished a round lately.
    pub fn live(&self) -> bool {
        self.report
            .read()
            .expect("status lock poisoned")
            .tables
            .iter()
            .all(|t| t.last_round.elapsed() < STUCK_AFTER)
    }

    /// Replaces what the report holds of one table.
    pub fn publish(
        &self,
        table: usize,
        shards: Vec<ShardStatus>,
        workers: usize,
        leases_owned: usize,
    ) {
        let mut report = self.report.write().expect("status lock poisoned");
        let name = report.tables[table].table.clone();
        report.tables[table].workers = workers;
        report.tables[table].leases_owned = leases_owned;
        report.shards.retain(|s| s.table != name);
        report.shards.extend(shards);
        report.leases_owned = report.tables.iter().map(|t| t.leases_owned).sum();
    }

    pub fn report(&self) -> StatusReport {
        let mut report = self.report.read().expect("status lock poisoned").clone();
        report.ready = self.ready();
        for shard in &mut report.shards {
            if let Some(live) = &shard.live {
                shard.checkpoint = live.checkpoint();
                shard.lag_seconds = Some(live.lag_seconds());
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(table: &str, id: &str) -> ShardStatus {
        ShardStatus {
            table: table.into(),
            shard_id: id.into(),
            state: "owned",
            owner: Some("me".into()),
            checkpoint: "TRIM_HORIZON".into(),
            parent_shard_ids: Vec::new(),
            lag_seconds: Some(0.0),
            live: None,
        }
    }

    #[derive(Debug)]
    struct Worker(RwLock<(String, f64)>);

    impl LiveShard for Worker {
        fn checkpoint(&self) -> String {
            self.0.read().unwrap().0.clone()
        }
        fn lag_seconds(&self) -> f64 {
            self.0.read().unwrap().1
        }
    }

    #[test]
    fn a_running_shard_shows_its_worker_s_checkpoint_as_of_the_request() {
        let board = StatusBoard::new(&"me".into(), &[("a".into(), "arn-a".into())]);
        let worker = Arc::new(Worker(RwLock::new(("TRIM_HORIZON".into(), 3.0))));
        let mut running = shard("a", "1");
        running.live = Some(worker.clone());
        board.publish(0, vec![running, shard("a", "2")], 1, 1);
        // The worker wrote a checkpoint after the coordinator's round.
        *worker.0.write().unwrap() = ("000000000000000000042".into(), 0.0);
        let r = board.report();
        assert_eq!(r.shards[0].checkpoint, "000000000000000000042");
        assert_eq!(r.shards[0].lag_seconds, Some(0.0));
        assert_eq!(r.shards[1].checkpoint, "TRIM_HORIZON");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["shards"][0]["checkpoint"], "000000000000000000042");
        assert!(json["shards"][0].get("live").is_none());
    }

    #[test]
    fn ready_when_every_table_synced_and_not_stopping() {
        let board = StatusBoard::new(
            &"me".into(),
            &[("a".into(), "arn-a".into()), ("b".into(), "arn-b".into())],
        );
        board.set_synced(0);
        assert!(!board.ready(), "table b not synced yet");
        board.set_synced(1);
        assert!(board.ready());
        board.set_stopping();
        assert!(!board.ready());
    }

    #[test]
    fn each_table_replaces_only_its_own_shards() {
        let board = StatusBoard::new(
            &"me".into(),
            &[("a".into(), "arn-a".into()), ("b".into(), "arn-b".into())],
        );
        board.publish(0, vec![shard("a", "1"), shard("a", "2")], 1, 2);
        board.publish(1, vec![shard("b", "1")], 2, 1);
        board.publish(0, vec![shard("a", "3")], 1, 1);
        let r = board.report();
        let ids: Vec<(&str, &str)> = r
            .shards
            .iter()
            .map(|s| (s.table.as_str(), s.shard_id.as_str()))
            .collect();
        assert_eq!(ids, [("b", "1"), ("a", "3")]);
        assert_eq!(r.leases_owned, 2);
        assert_eq!(r.tables[1].workers, 2);
    }
}
