//! Starts the real parts for integration tests: moto (DynamoDB, DynamoDB Streams, SQS), the
//! Nakadi test server, and the relay binary, each on a free loopback port, each stopped when
//! its handle is dropped. A missing dependency fails the test with a message saying how to get
//! it; nothing is skipped.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::scan::ScanError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, StreamSpecification, StreamViewType,
};
use dynamodb_nakadi_relay::transform::eid_for;
use serde_json::Value;

pub const REGION: &str = "eu-central-1";

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The project's virtualenv python, installed by `make test`.
pub fn python() -> PathBuf {
    let python = repo_root().join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make test` (it installs moto and the test servers' dependencies into .venv)",
        python.display()
    );
    python
}

/// Where a test's logs go: target/test-output/<name>/.
pub fn output_dir(test: &str) -> PathBuf {
    let dir = repo_root().join("target/test-output").join(test);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Polls `check` every 50 ms until it returns Some, or panics with `what` at the deadline.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    wait_for_every(what, timeout, Duration::from_millis(50), check).await
}

/// `wait_for` with another polling interval, for checks that read a lot.
pub async fn wait_for_every<T, F, Fut>(
    what: &str,
    timeout: Duration,
    every: Duration,
    mut check: F,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(every).await;
    }
}

/// A child process killed on drop.
pub struct Process {
    pub child: Child,
    pub name: String,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Process {
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{signal} {} failed", self.name);
    }

    pub async fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let name = self.name.clone();
        wait_for(&format!("{name} to exit"), timeout, || {
            let status = self.child.try_wait().expect("polling a child");
            async move { status }
        })
        .await
    }
}

/// Starts a test server that prints `LISTENING <port>` first.
fn spawn_listening(name: &str, mut cmd: Command, log: &Path) -> (Process, u16) {
    let stderr = std::fs::File::create(log).unwrap();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let port = line
        .trim()
        .strip_prefix("LISTENING ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "{name} did not start (printed {line:?}); see {}",
                log.display()
            )
        });
    (
        Process {
            child,
            name: name.into(),
        },
        port,
    )
}

pub struct Moto {
    /// Held for its `Drop`, which stops the server.
    _process: Process,
    pub endpoint: String,
}

impl Moto {
    pub async fn start(test: &str) -> Moto {
        let mut cmd = Command::new(python());
        cmd.arg(repo_root().join("tests/servers/moto_server.py"))
            .args(["--port", "0"]);
        let (process, port) = spawn_listening("moto", cmd, &output_dir(test).join("moto.log"));
        Moto {
            _process: process,
            endpoint: format!("http://127.0.0.1:{port}"),
        }
    }

    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new(REGION))
            .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
                "test", "test", None, None, "test",
            ))
            .load()
            .await
    }

    /// From now on, DynamoDB `operation` calls whose body contains `contains` answer `ms` late
    /// (`moto_server.py`'s latency hook); each such call's arrival and answer time is kept.
    pub async fn delay(&self, operation: &str, contains: &str, ms: u64) {
        reqwest::Client::new()
            .post(format!("{}/_test/latency", self.endpoint))
            .json(&serde_json::json!({"operation": operation, "contains": contains, "ms": ms}))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("setting moto's latency");
    }

    /// From now on, DynamoDB `operation` calls whose body contains `contains` fail with the
    /// DynamoDB error `error` (such as `ProvisionedThroughputExceededException`), not carried out.
    pub async fn delay_failing(&self, operation: &str, contains: &str, error: &str) {
        reqwest::Client::new()
            .post(format!("{}/_test/latency", self.endpoint))
            .json(&serde_json::json!({"operation": operation, "contains": contains, "ms": 0, "error": error}))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("setting moto's failures");
    }

    /// The delayed calls so far: `{"start", "end"}` in Unix seconds, and the request `body`.
    pub async fn delayed_calls(&self) -> Vec<serde_json::Value> {
        let body: serde_json::Value = reqwest::get(format!("{}/_test/latency", self.endpoint))
            .await
            .expect("reading moto's delayed calls")
            .json()
            .await
            .unwrap();
        body["calls"].as_array().unwrap().clone()
    }

    pub async fn dynamodb(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&self.sdk_config().await)
    }

    pub async fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::new(&self.sdk_config().await)
    }

    /// A table with a NEW_AND_OLD_IMAGES stream keyed by `pk` (string); returns the stream ARN.
    pub async fn create_table(&self, table: &str) -> String {
        self.create_table_keyed(table, &[("pk", ScalarAttributeType::S)])
            .await
    }

    /// A table with a NEW_AND_OLD_IMAGES stream and the given key: the hash key, then the range
    /// key if there is a second; returns the stream ARN.
    pub async fn create_table_keyed(
        &self,
        table: &str,
        key: &[(&str, ScalarAttributeType)],
    ) -> String {
        self.create_table_viewing(table, key, StreamViewType::NewAndOldImages)
            .await
    }

    /// A table with a stream of view type `view` and the given key; returns the stream ARN.
    pub async fn create_table_viewing(
        &self,
        table: &str,
        key: &[(&str, ScalarAttributeType)],
        view: StreamViewType,
    ) -> String {
        let mut req = self
            .dynamodb()
            .await
            .create_table()
            .table_name(table)
            .billing_mode(BillingMode::PayPerRequest)
            .stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(view)
                    .build()
                    .unwrap(),
            );
        for (i, (name, kind)) in key.iter().enumerate() {
            req = req
                .attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(*name)
                        .attribute_type(kind.clone())
                        .build()
                        .unwrap(),
                )
                .key_schema(
                    KeySchemaElement::builder()
                        .attribute_name(*name)
                        .key_type(if i == 0 {
                            KeyType::Hash
                        } else {
                            KeyType::Range
                        })
                        .build()
                        .unwrap(),
                );
        }
        req.send()
            .await
            .expect("creating the table")
            .table_description()
            .and_then(|t| t.latest_stream_arn())
            .expect("the table has a stream")
            .to_owned()
    }

    /// A DLQ set up as docs/operating.md does: its redrive policy moves a letter to the queue
    /// `<name>-parking` after 10 receives, both keep messages 14 days. Returns the DLQ's URL.
    pub async fn create_dlq_with_parking(&self, name: &str) -> String {
        const FOURTEEN_DAYS: &str = "1209600";
        let parking = self
            .create_queue(
                &format!("{name}-parking"),
                &[("MessageRetentionPeriod", FOURTEEN_DAYS)],
            )
            .await;
        let arn = self.queue_arn(&parking).await;
        let policy = serde_json::json!({"deadLetterTargetArn": arn, "maxReceiveCount": "10"});
        self.create_queue(
            name,
            &[
                ("MessageRetentionPeriod", FOURTEEN_DAYS),
                ("RedrivePolicy", &policy.to_string()),
            ],
        )
        .await
    }

    /// The queue's ARN, as a redrive policy names it.
    pub async fn queue_arn(&self, url: &str) -> String {
        use aws_sdk_sqs::types::QueueAttributeName;
        self.sqs()
            .await
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .unwrap()
            .attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .unwrap()
    }

    pub async fn create_queue(&self, name: &str, attributes: &[(&str, &str)]) -> String {
        let mut req = self.sqs().await.create_queue().queue_name(name);
        for (k, v) in attributes {
            req = req.attributes(aws_sdk_sqs::types::QueueAttributeName::from(*k), *v);
        }
        req.send()
            .await
            .expect("creating the queue")
            .queue_url()
            .unwrap()
            .to_owned()
    }
}

pub struct Nakadi {
    /// Held for its `Drop`, which stops the server.
    _process: Process,
    pub url: String,
    http: reqwest::Client,
    /// Events read so far: each call fetches only what arrived since, so polling a server that
    /// holds tens of thousands of events stays cheap for both sides.
    seen: tokio::sync::Mutex<Vec<Value>>,
}

impl Nakadi {
    pub fn start(test: &str, extra_args: &[&str]) -> Nakadi {
        let mut cmd = Command::new(python());
        cmd.arg(repo_root().join("tests/servers/nakadi_server.py"))
            .args(["--port", "0"])
            .args(extra_args);
        let (process, port) = spawn_listening(
            "nakadi test server",
            cmd,
            &output_dir(test).join("nakadi.log"),
        );
        Nakadi {
            _process: process,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
            seen: tokio::sync::Mutex::new(Vec::new()),
        }
    }

    /// Every accepted event, in arrival order, each wrapped with where and when it arrived:
    /// `{"seq", "event_type", "eid", "flow_id", "received_at", "received_epoch", "event"}`.
    pub async fn events_with_arrival(&self) -> Vec<Value> {
        let body: Value = self
            .http
            .get(format!("{}/_test/events?meta=1", self.url))
            .send()
            .await
            .expect("reading the Nakadi test server")
            .json()
            .await
            .unwrap();
        body["events"].as_array().unwrap().clone()
    }

    /// Every accepted event, in arrival order, numbers exact.
    /// The eids of every event stored so far.
    pub async fn eids(&self) -> std::collections::HashSet<String> {
        self.events()
            .await
            .iter()
            .map(|e| e["metadata"]["eid"].as_str().unwrap().to_owned())
            .collect()
    }

    pub async fn events(&self) -> Vec<Value> {
        let mut seen = self.seen.lock().await;
        let body = self
            .http
            .get(format!("{}/_test/events?offset={}", self.url, seen.len()))
            .send()
            .await
            .expect("reading the Nakadi test server")
            .text()
            .await
            .unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        seen.extend(v["events"].as_array().cloned().unwrap_or_default());
        seen.clone()
    }

    pub async fn fault(&self, rule: Value) {
        let r = self
            .http
            .post(format!("{}/_test/faults", self.url))
            .json(&rule)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
    }

    /// Registers an event type's definition (the body of `POST /event-types`), which the server
    /// serves from then on at `GET /event-types/{name}`.
    pub async fn register_event_type(&self, definition: &Value) {
        let r = self
            .http
            .post(format!("{}/_test/event-types", self.url))
            .json(definition)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "registering {definition}: {r:?}");
    }

    pub async fn clear_faults(&self) {
        self.http
            .delete(format!("{}/_test/faults", self.url))
            .send()
            .await
            .unwrap();
    }
}

/// The relay binary, configured for moto and the Nakadi test server. Its HTTP server binds port
/// 0; the address it got is read from its "relay started" log line.
pub struct Relay {
    pub process: Process,
    pub log: PathBuf,
    http: OnceLock<String>,
}

pub fn base_env(
    moto: &Moto,
    nakadi: &Nakadi,
    stream_arn: &str,
    lease_table: &str,
    dlq_url: &str,
) -> HashMap<String, String> {
    [
        ("AWS_ENDPOINT_URL", moto.endpoint.as_str()),
        ("AWS_REGION", REGION),
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("RELAY_STREAM_ARN", stream_arn),
        ("RELAY_LEASE_TABLE", lease_table),
        ("RELAY_CREATE_LEASE_TABLE", "true"),
        ("RELAY_NAKADI_URL", nakadi.url.as_str()),
        ("RELAY_EVENT_TYPE", "payments.order-changed"),
        ("RELAY_DLQ_URL", dlq_url),
        ("RELAY_LOG_FORMAT", "json"),
        ("RELAY_LEASE_RENEW_INTERVAL", "1s"),
        ("RELAY_LEASE_CALL_TIMEOUT", "900ms"),
        ("RELAY_LEASE_DURATION", "4s"),
        ("RELAY_NAKADI_MAX_RETRY_TIME", "2s"),
        ("RELAY_DLQ_REDRAIN_INTERVAL", "1s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// The relay's variables with RELAY_TABLES_FILE (holding `toml`) instead of one table's.
pub fn tables_env(
    test: &str,
    moto: &Moto,
    nakadi: &Nakadi,
    dlq: &str,
    toml: &str,
) -> HashMap<String, String> {
    let tables_file = output_dir(test).join("tables.toml");
    std::fs::write(&tables_file, toml).unwrap();
    let mut env = base_env(moto, nakadi, "unused", "relay-leases", dlq);
    env.remove("RELAY_STREAM_ARN");
    env.remove("RELAY_EVENT_TYPE");
    env.insert(
        "RELAY_TABLES_FILE".into(),
        tables_file.display().to_string(),
    );
    env
}

impl Relay {
    /// Starts the relay; `name` distinguishes several relays of one test in the logs.
    pub fn start(test: &str, name: &str, env: &HashMap<String, String>) -> Relay {
        Relay::start_in(test, name, env, &repo_root())
    }

    /// `start` with another working directory, where a relative path would be written.
    pub fn start_in(test: &str, name: &str, env: &HashMap<String, String>, dir: &Path) -> Relay {
        let log = output_dir(test).join(format!("{name}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_dynamodb-nakadi-relay"))
            .current_dir(dir)
            .env_clear()
            .envs(env)
            .env("RELAY_HTTP_ADDR", "127.0.0.1:0")
            .env("RELAY_WORKER_ID", name)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("starting the relay binary");
        Relay {
            process: Process {
                child,
                name: name.into(),
            },
            log,
            http: OnceLock::new(),
        }
    }

    /// `http://<address>` of the relay's HTTP server, once it has logged "relay started"; None
    /// before. Needs the JSON log format of `base_env`.
    pub fn http(&self) -> Option<&str> {
        if let Some(http) = self.http.get() {
            return Some(http);
        }
        let logs = self.logs();
        let started = logs.lines().find(|l| l.contains("\"relay started\""))?;
        let line: Value = serde_json::from_str(started).ok()?;
        let addr = line["http"].as_str()?;
        Some(self.http.get_or_init(|| format!("http://{addr}")))
    }

    /// `http`, waiting for the relay to start.
    pub async fn http_url(&self) -> String {
        wait_for("the relay to listen", Duration::from_secs(60), || async {
            self.http().map(str::to_owned)
        })
        .await
    }

    pub async fn get(&self, path: &str) -> Option<(u16, String)> {
        let r = reqwest::get(format!("{}{path}", self.http()?)).await.ok()?;
        let status = r.status().as_u16();
        Some((status, r.text().await.ok()?))
    }

    pub async fn wait_ready(&self) {
        wait_for("the relay to be ready", Duration::from_secs(60), || async {
            self.get("/health/ready")
                .await
                .filter(|(s, _)| *s == 200)
                .map(|_| ())
        })
        .await;
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A DynamoDB attribute value as the event must show it (DESIGN.md's table): the test's own
/// oracle, independent of the relay's transform.
pub fn expected_json(v: &AttributeValue) -> Value {
    match v {
        AttributeValue::S(s) => Value::String(s.clone()),
        AttributeValue::N(n) => serde_json::from_str(n).unwrap(),
        AttributeValue::Bool(b) => Value::Bool(*b),
        AttributeValue::Null(_) => Value::Null,
        AttributeValue::M(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), expected_json(v)))
                .collect(),
        ),
        AttributeValue::L(l) => Value::Array(l.iter().map(expected_json).collect()),
        AttributeValue::Ss(ss) => {
            let mut ss = ss.clone();
            ss.sort();
            Value::Array(ss.into_iter().map(Value::String).collect())
        }
        other => panic!("the tests do not write {other:?}"),
    }
}

pub fn item_json(item: &HashMap<String, AttributeValue>) -> Value {
    Value::Object(
        item.iter()
            .map(|(k, v)| (k.clone(), expected_json(v)))
            .collect(),
    )
}

/// Every record of the table's stream (one shard on moto), as (eventID, sequence number).
pub async fn stream_records(moto: &Moto, stream_arn: &str) -> Vec<(String, String)> {
    let streams = aws_sdk_dynamodbstreams::Client::new(&moto.sdk_config().await);
    let desc = streams
        .describe_stream()
        .stream_arn(stream_arn)
        .send()
        .await
        .unwrap();
    let mut records = Vec::new();
    for shard in desc.stream_description().unwrap().shards() {
        let mut it = streams
            .get_shard_iterator()
            .stream_arn(stream_arn)
            .shard_id(shard.shard_id().unwrap())
            .shard_iterator_type(aws_sdk_dynamodbstreams::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap()
            .shard_iterator
            .unwrap();
        loop {
            let out = streams
                .get_records()
                .shard_iterator(&it)
                .send()
                .await
                .unwrap();
            if out.records().is_empty() {
                break;
            }
            for r in out.records() {
                records.push((
                    r.event_id().unwrap().to_owned(),
                    r.dynamodb().unwrap().sequence_number().unwrap().to_owned(),
                ));
            }
            match out.next_shard_iterator {
                Some(next) => it = next,
                None => break,
            }
        }
    }
    records
}

/// One item of the lease table, by attribute name.
pub type LeaseItem = HashMap<String, AttributeValue>;

/// The items of the lease table whose `kind` is `kind` ("shard", "snapshot_segment", ...), read
/// consistently, every page; the scan's error (e.g. while the relay has not created the table yet)
/// is the caller's to judge.
pub async fn lease_items(
    moto: &Moto,
    lease_table: &str,
    kind: &str,
) -> Result<Vec<LeaseItem>, SdkError<ScanError>> {
    let ddb = moto.dynamodb().await;
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let out = ddb
            .scan()
            .table_name(lease_table)
            .consistent_read(true)
            .set_exclusive_start_key(start)
            .send()
            .await?;
        items.extend(
            out.items()
                .iter()
                .filter(|i| {
                    i.get("kind")
                        .and_then(|k| k.as_s().ok())
                        .map(String::as_str)
                        == Some(kind)
                })
                .cloned(),
        );
        start = out.last_evaluated_key;
        if start.is_none() {
            return Ok(items);
        }
    }
}

/// The checkpoints of the shard leases in the lease table.
pub async fn checkpoints(moto: &Moto, lease_table: &str) -> Vec<String> {
    lease_items(moto, lease_table, "shard")
        .await
        .expect("scanning the lease table")
        .iter()
        .filter_map(|i| i.get("checkpoint").and_then(|c| c.as_s().ok()).cloned())
        .collect()
}

/// Puts `order-<i>` with amount `<i>.50` into the table `orders`, for each `i` in `keys`.
pub async fn put_orders(moto: &Moto, keys: std::ops::Range<usize>) {
    let ddb = moto.dynamodb().await;
    for i in keys {
        ddb.put_item()
            .table_name("orders")
            .item("pk", AttributeValue::S(format!("order-{i}")))
            .item("amount", AttributeValue::N(format!("{i}.50")))
            .send()
            .await
            .unwrap();
    }
}

/// Runs `dynamodb-nakadi-relay redrive --once` with exactly `env` to its end, asserts that it
/// succeeded, and returns the report it prints (one JSON object).
pub async fn redrive_once(env: &HashMap<String, String>) -> Value {
    let env = env.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_dynamodb-nakadi-relay"))
            .args(["redrive", "--once"])
            .env_clear()
            .envs(&env)
            .output()
            .expect("running redrive --once")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("redrive --once printed no JSON report ({e}): {stdout}"))
}

/// Messages in a queue (visible and in flight).
pub async fn queue_depth(moto: &Moto, url: &str) -> usize {
    use aws_sdk_sqs::types::QueueAttributeName as A;
    let out = moto
        .sqs()
        .await
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(A::ApproximateNumberOfMessages)
        .attribute_names(A::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .unwrap();
    let attrs = out.attributes().unwrap();
    [
        A::ApproximateNumberOfMessages,
        A::ApproximateNumberOfMessagesNotVisible,
    ]
    .iter()
    .map(|a| {
        attrs
            .get(a)
            .and_then(|v| v.parse::<usize>().ok())
            .unwrap_or(0)
    })
    .sum()
}

/// A TCP proxy in front of a server that can be switched off: while down it cuts open
/// connections and closes new ones at once, as an unreachable service looks to a client.
pub struct FaultProxy {
    pub url: String,
    down: tokio::sync::watch::Sender<bool>,
}

impl FaultProxy {
    pub async fn start(target: &str) -> FaultProxy {
        let target = target.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (down, watch) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if *watch.borrow() {
                    continue;
                }
                let target = target.clone();
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            _ = watch.wait_for(|down| *down) => {}
                        }
                    }
                });
            }
        });
        FaultProxy { url, down }
    }

    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }
}

/// A TCP endpoint that accepts connections and never answers, as a stalled load balancer or a
/// proxy whose upstream hangs looks to a client. Stops on drop.
pub struct Silent {
    pub url: String,
    task: tokio::task::JoinHandle<()>,
}

impl Silent {
    pub async fn start() -> Silent {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            // Held, never read nor closed: the client waits for an answer that never comes.
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        Silent { url, task }
    }
}

impl Drop for Silent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The DynamoDB Streams fault server (tests/servers/streams_fault_server.py).
pub struct StreamsFault {
    /// Held for its `Drop`, which stops the server.
    _process: Process,
    pub ctl: StreamsControl,
}

/// Its control API; cheap to clone into a writer task.
#[derive(Clone)]
pub struct StreamsControl {
    pub url: String,
    http: reqwest::Client,
}

impl StreamsFault {
    pub fn start(test: &str) -> StreamsFault {
        let mut cmd = Command::new(python());
        cmd.arg(repo_root().join("tests/servers/streams_fault_server.py"))
            .args(["--port", "0"]);
        let (process, port) = spawn_listening(
            "streams fault server",
            cmd,
            &output_dir(test).join("streams.log"),
        );
        StreamsFault {
            _process: process,
            ctl: StreamsControl {
                url: format!("http://127.0.0.1:{port}"),
                // A fresh connection per call: Python's http.server may close an idle
                // keep-alive connection just as a POST is sent on it, and a POST of records
                // cannot be retried blindly.
                http: reqwest::Client::builder()
                    .pool_max_idle_per_host(0)
                    .build()
                    .unwrap(),
            },
        }
    }
}

impl StreamsControl {
    pub async fn call(&self, path: &str, body: Value) -> Value {
        let r = self
            .http
            .post(format!("{}/_test/{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e:?}"));
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }

    pub async fn get(&self, path: &str) -> Value {
        self.http
            .get(format!("{}/_test/{path}", self.url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// A NEW_AND_OLD_IMAGES stream keyed by `pk`, with small DescribeStream pages.
    pub async fn create_stream(&self, shards: usize, page_size: usize) -> String {
        let v = self
            .call(
                "streams",
                serde_json::json!({"table": "orders", "shards": shards, "describe_page_size": page_size,
                       "key_schema": [{"AttributeName": "pk", "KeyType": "HASH"}]}),
            )
            .await;
        v["stream_arn"].as_str().unwrap().to_owned()
    }

    /// Appends one change per (key, seq): `seq` in the new image tells the write order per key.
    /// Returns each record as the server appended it, in the order of `writes`.
    pub async fn write(&self, stream_arn: &str, writes: &[(String, u64)]) -> Vec<Written> {
        let records: Vec<Value> = writes
            .iter()
            .map(|(key, seq)| {
                let image = |s: u64| serde_json::json!({"pk": {"S": key}, "seq": {"N": s.to_string()}});
                let mut r = serde_json::json!({"key": key, "keys": {"pk": {"S": key}}, "new_image": image(*seq),
                                   "event_name": if *seq == 0 { "INSERT" } else { "MODIFY" }});
                if *seq > 0 {
                    r["old_image"] = image(seq - 1);
                }
                r
            })
            .collect();
        let started = Instant::now();
        let v = self
            .call(
                "records",
                serde_json::json!({"stream_arn": stream_arn, "records": records}),
            )
            .await;
        v["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| Written {
                started,
                shard: r["shard_id"].as_str().unwrap().to_owned(),
                sequence: r["sequence_number"].as_str().unwrap().parse().unwrap(),
                eid: eid_for(r["event_id"].as_str().unwrap()).to_string(),
            })
            .collect()
    }
}

/// One record appended to the fault server's stream.
#[derive(Clone, Debug)]
pub struct Written {
    /// When the write call that appended it started: it cannot have been read before.
    pub started: Instant,
    pub shard: String,
    pub sequence: u128,
    /// The eid of its event.
    pub eid: String,
}

/// Writes one change for each of `keys` keys (`key-000`, ...; `seq` 0, 1, ... per round) every
/// `every`, until finished; what it wrote so far is readable while it runs.
pub struct Writer {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Written>>>,
    handle: tokio::task::JoinHandle<()>,
}

impl Writer {
    pub fn start(ctl: StreamsControl, stream_arn: String, keys: usize, every: Duration) -> Writer {
        Writer::start_from(ctl, stream_arn, keys, every, 0)
    }

    /// `Writer::start` whose first round writes `seq` = `first_seq`: it continues the keys of a
    /// writer that finished after `first_seq` rounds, so per-key order spans both.
    pub fn start_from(
        ctl: StreamsControl,
        stream_arn: String,
        keys: usize,
        every: Duration,
        first_seq: u64,
    ) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (flag, out) = (stop.clone(), log.clone());
        let handle = tokio::spawn(async move {
            let mut seq = first_seq;
            while !flag.load(Ordering::SeqCst) {
                let batch: Vec<(String, u64)> =
                    (0..keys).map(|k| (format!("key-{k:03}"), seq)).collect();
                let written = ctl.write(&stream_arn, &batch).await;
                out.lock().unwrap().extend(written);
                seq += 1;
                tokio::time::sleep(every).await;
            }
        });
        Writer { stop, log, handle }
    }

    /// How many records it has written so far.
    pub fn count(&self) -> usize {
        self.log.lock().unwrap().len()
    }

    /// The records it has written so far.
    pub fn written(&self) -> Vec<Written> {
        self.log.lock().unwrap().clone()
    }

    /// Stops it after the round in progress; every record it wrote.
    pub async fn finish(self) -> Vec<Written> {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.await.unwrap();
        std::mem::take(&mut *self.log.lock().unwrap())
    }
}

/// The value of one series in a `/metrics` text, e.g. `relay_records_read_total{table="orders"}`
/// (labels as the exposition writes them: sorted by name). Panics naming the series if absent.
pub fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{series} not in:\n{metrics}"))
}

/// Env for a relay reading the fault server's stream, with moto for the lease table and SQS.
pub fn fault_env(
    moto: &Moto,
    nakadi: &Nakadi,
    streams: &StreamsFault,
    stream_arn: &str,
    dlq_url: &str,
) -> HashMap<String, String> {
    let mut env = base_env(moto, nakadi, stream_arn, "relay-leases", dlq_url);
    env.insert(
        "AWS_ENDPOINT_URL_DYNAMODB_STREAMS".into(),
        streams.ctl.url.clone(),
    );
    env
}

/// moto (lease table, DLQ), the Nakadi test server and the Streams fault server with one stream,
/// and the relay's environment for them.
pub struct FaultSetup {
    pub moto: Moto,
    pub nakadi: Nakadi,
    pub streams: StreamsFault,
    pub arn: String,
    pub env: HashMap<String, String>,
}

impl FaultSetup {
    /// A stream of `shards` open shards that DescribeStream lists `page_size` at a time.
    pub async fn start(test: &str, shards: usize, page_size: usize) -> FaultSetup {
        let moto = Moto::start(test).await;
        let nakadi = Nakadi::start(test, &[]);
        let streams = StreamsFault::start(test);
        let arn = streams.ctl.create_stream(shards, page_size).await;
        let dlq = moto.create_queue("relay-dlq", &[]).await;
        let env = fault_env(&moto, &nakadi, &streams, &arn, &dlq);
        FaultSetup {
            moto,
            nakadi,
            streams,
            arn,
            env,
        }
    }
}

/// Per key, the `seq` values of the events in arrival order, first arrival of each eid only;
/// and the set of eids.
pub fn per_key_sequences(
    events: &[Value],
) -> (HashMap<String, Vec<u64>>, std::collections::HashSet<String>) {
    let mut seen = std::collections::HashSet::new();
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    for e in events {
        let eid = e["metadata"]["eid"].as_str().unwrap().to_owned();
        if !seen.insert(eid) {
            continue;
        }
        let item = &e["data"]["item"];
        let key = item["pk"].as_str().unwrap().to_owned();
        let seq = item["seq"].as_u64().unwrap();
        per_key.entry(key).or_default().push(seq);
    }
    (per_key, seen)
}

/// A number from the environment, for the long forms of the chaos and lifecycle tests.
pub fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// S3 on moto, for dead letters too large for the queue.
impl Moto {
    /// An S3 client built as the relay builds its own (path-style, since the endpoint is local).
    pub async fn s3(&self) -> aws_sdk_s3::Client {
        dynamodb_nakadi_relay::startup::s3_client(&self.sdk_config().await)
    }

    pub async fn create_bucket(&self, bucket: &str) {
        use aws_sdk_s3::types::{BucketLocationConstraint, CreateBucketConfiguration};
        self.s3()
            .await
            .create_bucket()
            .bucket(bucket)
            .create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(REGION))
                    .build(),
            )
            .send()
            .await
            .expect("creating the bucket");
    }

    /// The keys of the bucket's objects, in key order.
    pub async fn object_keys(&self, bucket: &str) -> Vec<String> {
        self.s3()
            .await
            .list_objects_v2()
            .bucket(bucket)
            .send()
            .await
            .expect("listing the bucket")
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect()
    }

    /// An object's content as text, or None when there is no such object.
    pub async fn object(&self, bucket: &str, key: &str) -> Option<String> {
        match self
            .s3()
            .await
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
        {
            Ok(out) => {
                let bytes = out.body.collect().await.unwrap().into_bytes();
                Some(String::from_utf8(bytes.to_vec()).unwrap())
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => None,
            Err(e) => panic!(
                "reading s3://{bucket}/{key}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            ),
        }
    }
}

/// Runs the relay binary with `args` and exactly `env`, nothing of the test's own environment,
/// to its end: (exit code, stdout, stderr).
pub fn run_binary<K, V>(args: &[&str], env: &HashMap<K, V>) -> (Option<i32>, String, String)
where
    K: AsRef<std::ffi::OsStr>,
    V: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(env!("CARGO_BIN_EXE_dynamodb-nakadi-relay"))
        .args(args)
        .env_clear()
        .envs(env)
        .output()
        .expect("running the relay binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// What stands between the relay and AWS (tests/servers/aws_edge_server.py): container
/// credentials that expire, signature and clock checks in front of an upstream, a forward proxy,
/// and TLS with a CA of its own.
pub struct Edge {
    /// Held for its `Drop`, which stops the server.
    _process: Process,
    /// `http://127.0.0.1:<port>`, or `https://localhost:<port>` with TLS.
    pub url: String,
    /// With TLS: the CA certificate to trust.
    pub ca: Option<PathBuf>,
    control: String,
}

impl Edge {
    /// `upstream`: where signed requests go; `args`: more of the server's options.
    pub fn start(test: &str, upstream: &str, args: &[&str]) -> Edge {
        let tls_dir = output_dir(test).join("edge-tls");
        let tls = args.contains(&"--tls");
        let mut cmd = Command::new(python());
        cmd.arg(repo_root().join("tests/servers/aws_edge_server.py"))
            .args(["--port", "0", "--upstream", upstream])
            .args(args.iter().filter(|a| **a != "--tls"));
        if tls {
            cmd.arg("--tls-dir").arg(&tls_dir);
        }
        let (process, port) = spawn_listening("aws edge", cmd, &output_dir(test).join("edge.log"));
        let (url, ca) = if tls {
            (
                format!("https://localhost:{port}"),
                Some(tls_dir.join("ca.pem")),
            )
        } else {
            (format!("http://127.0.0.1:{port}"), None)
        };
        Edge {
            _process: process,
            url,
            ca,
            control: format!("{}://127.0.0.1:{port}", if tls { "https" } else { "http" }),
        }
    }

    fn client(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder();
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca).unwrap();
            builder = builder.tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()]);
        }
        builder.build().unwrap()
    }

    pub async fn stats(&self) -> Value {
        self.client()
            .get(format!("{}/_edge/stats", self.control))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("reading the edge's stats")
            .json()
            .await
            .unwrap()
    }

    /// Shifts the edge's clock: its `Date` and the time it checks signatures against.
    pub async fn set_clock_offset(&self, seconds: i64) {
        self.client()
            .post(format!("{}/_edge/clock", self.control))
            .json(&serde_json::json!({ "offset_s": seconds }))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("setting the edge's clock");
    }
}
