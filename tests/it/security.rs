//! Security properties of the relay as deployed:
//! - the Nakadi token never leaves the process: not in logs (at debug level, through 401s, a
//!   rotation and an unusable token file), metrics, `/status`, the health endpoints, dead
//!   letters or the lease table, and no panic happens on the way;
//! - the relay writes nothing to disk, so the read-only root filesystem of the chart holds, and
//!   the image and the chart agree on one numeric non-root user;
//! - the IAM policies of the docs and of cloudformation/relay.yaml grant exactly the AWS actions
//!   the relay's source calls.
//!
//! The rest of the hardening of the rendered chart (runAsNonRoot, readOnlyRootFilesystem,
//! capabilities, seccomp, read-only mounts) is checked by scripts/check-deploy.sh; the
//! dependencies' licenses by `make deny`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use dynamodb_nakadi_relay::transform::eid_for;
use serde_json::{Value, json};

use crate::support::*;

/// Recognizable, and unlike anything the relay would print by itself.
const TOKEN_A: &str = "tok-A-7f3c91d2e8b4a6051c";
const TOKEN_B: &str = "tok-B-2b9e04f7a1c3d58e6f";
/// Written with a byte no header may hold: the relay must refuse it without quoting it.
const TOKEN_BAD: &str = "tok-BAD-5d1a8c7e3f90b246";
/// Longer than steps 1-3 of the token test take, with a wide margin for a loaded machine.
const REDRAIN_INTERVAL: Duration = Duration::from_secs(30);

fn replace_file(path: &Path, content: &[u8]) {
    // As Kubernetes rotates a mounted secret: a new file renamed over the old one.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, content).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The sum of all series of a metric, whatever their labels.
fn metric_total(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn nakadi_requests(nakadi: &Nakadi) -> Vec<Value> {
    reqwest::get(format!("{}/_test/requests", nakadi.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Every dead letter in the queue, left in it (visibility 0).
async fn dead_letters(moto: &Moto, dlq: &str) -> Vec<String> {
    let out = moto
        .sqs()
        .await
        .receive_message()
        .queue_url(dlq)
        .max_number_of_messages(10)
        .visibility_timeout(0)
        // Long-polled: the relay's re-drain loop hides the letters too, between its rounds, and
        // a short poll can keep missing the moments they are visible.
        .wait_time_seconds(5)
        .send()
        .await
        .unwrap();
    out.messages()
        .iter()
        .filter_map(|m| m.body().map(str::to_owned))
        .collect()
}

/// Regular files the process holds open for writing, except `allowed` (its stderr log).
fn files_open_for_writing(pid: u32, allowed: &Path) -> Vec<String> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for fd in fds.flatten() {
        let Ok(target) = std::fs::read_link(fd.path()) else {
            continue;
        };
        if !target.is_absolute() || target.starts_with("/dev") || target == allowed {
            continue;
        }
        let info = std::fs::read_to_string(format!(
            "/proc/{pid}/fdinfo/{}",
            fd.file_name().to_string_lossy()
        ))
        .unwrap_or_default();
        let flags = info
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
            .unwrap_or(0);
        // O_WRONLY or O_RDWR.
        if flags & 0o3 != 0 {
            found.push(format!("{} (flags {flags:o})", target.display()));
        }
    }
    found
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_leaves_the_process_and_nothing_is_written_to_disk() {
    let test = "security_token";
    let moto = Moto::start(test).await;
    let nakadi = Nakadi::start(test, &["--token", TOKEN_A]);
    let arn = moto.create_table("orders").await;
    let dlq = moto.create_queue("relay-dlq", &[]).await;
    let secrets = tempfile::tempdir().unwrap();
    let token_file = secrets.path().join("token");
    replace_file(&token_file, TOKEN_A.as_bytes());
    // Where a relay that wrote files would put them: its working directory, $TMPDIR and $HOME.
    let (cwd, tmp, home) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );

    let mut env = base_env(&moto, &nakadi, &arn, "relay-leases", &dlq);
    env.insert(
        "RELAY_NAKADI_TOKEN_FILE".into(),
        token_file.display().to_string(),
    );
    // Every crate at debug: what an operator hunting a problem turns on.
    env.insert("RUST_LOG".into(), "debug".into());
    env.insert("RELAY_NAKADI_MAX_ATTEMPTS".into(), "3".into());
    // The re-drain loop's first round comes after steps 1-3, so it receives the dead letters
    // once the token file is right (step 4) and never fails on them. A failed round would hide
    // them for its back-off, which doubles with each receive, the test's own read included.
    let redrain_interval = humantime::format_duration(REDRAIN_INTERVAL).to_string();
    env.insert(
        "RELAY_DLQ_REDRAIN_INTERVAL".into(),
        redrain_interval.clone(),
    );
    env.insert("TMPDIR".into(), tmp.path().display().to_string());
    env.insert("HOME".into(), home.path().display().to_string());
    let mut relay = Relay::start_in(test, "relay-1", &env, cwd.path());
    let pid = relay.process.child.id();
    let mut written_to = Vec::new();
    relay.wait_ready().await;

    // 1. The token works.
    put_orders(&moto, 0..5).await;
    wait_for("5 events published", Duration::from_secs(60), || async {
        (nakadi.events().await.len() >= 5).then_some(())
    })
    .await;
    written_to.extend(files_open_for_writing(pid, &relay.log));

    // 2. Nakadi moves to another token before the file does: 401s, re-reads of the file, and
    //    finally dead letters (which carry the whole event and the failure).
    let http = reqwest::Client::new();
    http.post(format!("{}/_test/token", nakadi.url))
        .json(&json!({"token": TOKEN_B}))
        .send()
        .await
        .unwrap();
    put_orders(&moto, 5..10).await;
    wait_for(
        "the 401-refused events in the DLQ",
        Duration::from_secs(60),
        || async {
            let (_, m) = relay.get("/metrics").await?;
            (metric_total(&m, "relay_dlq_sent_total") >= 5.0).then_some(())
        },
    )
    .await;
    let letters = dead_letters(&moto, &dlq).await;
    assert!(!letters.is_empty(), "the dead letters are read");
    written_to.extend(files_open_for_writing(pid, &relay.log));

    // 3. A token file that cannot be a header: the next publish refuses it without quoting it,
    //    keeps the old token and, refused with that, dead-letters its event too.
    let mut bad = TOKEN_BAD.as_bytes().to_vec();
    bad.push(0x07);
    replace_file(&token_file, &bad);
    put_orders(&moto, 10..11).await;
    wait_for(
        "the unusable token file refused and its event dead-lettered",
        Duration::from_secs(60),
        || async {
            let (_, m) = relay.get("/metrics").await?;
            (relay.logs().contains("re-reading the Nakadi token failed")
                && metric_total(&m, "relay_dlq_sent_total") >= 6.0)
                .then_some(())
        },
    )
    .await;
    let (_, m) = relay.get("/metrics").await.expect("/metrics");
    assert_eq!(
        metric_total(&m, "relay_dlq_redrained_total"),
        0.0,
        "steps 1-3 took longer than the re-drain interval ({redrain_interval}): a round \
         failed on the dead letters and hid them for its back-off"
    );

    // 4. The file catches up: the re-drain loop's first round publishes the dead letters.
    replace_file(&token_file, TOKEN_B.as_bytes());
    let records = stream_records(&moto, &arn).await;
    let expected: HashSet<String> = records
        .iter()
        .map(|(id, _)| eid_for(id).to_string())
        .collect();
    assert_eq!(expected.len(), 11);
    wait_for(
        "every event at Nakadi and the DLQ empty",
        REDRAIN_INTERVAL + Duration::from_secs(60),
        || async {
            let got = nakadi.eids().await;
            (got == expected && queue_depth(&moto, &dlq).await == 0).then_some(())
        },
    )
    .await;
    written_to.extend(files_open_for_writing(pid, &relay.log));

    let mut exposed: BTreeMap<&str, String> = BTreeMap::new();
    for path in ["/metrics", "/status", "/health/live", "/health/ready"] {
        let (_, body) = relay.get(path).await.expect(path);
        exposed.insert(path, body);
    }
    exposed.insert("dead letters", letters.join("\n"));
    let leases = moto
        .dynamodb()
        .await
        .scan()
        .table_name("relay-leases")
        .send()
        .await
        .unwrap();
    exposed.insert("lease table", format!("{:?}", leases.items()));
    relay.process.signal("TERM");
    let status = relay.process.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0), "{}", relay.logs());
    let logs = relay.logs();
    exposed.insert("log", logs.clone());

    // The scenario happened as planned, or the checks below would prove nothing.
    let requests = nakadi_requests(&nakadi).await;
    let auth: HashSet<&str> = requests
        .iter()
        .filter_map(|r| r["authorization"].as_str())
        .collect();
    assert_eq!(auth, HashSet::from(["ok", "wrong"]), "{requests:?}");
    assert!(
        logs.contains("read a new Nakadi token"),
        "the rotation was read"
    );
    assert!(
        logs.lines().count() > 100,
        "debug logging was on: {} lines",
        logs.lines().count()
    );
    assert!(
        exposed["/metrics"].contains("relay_publish_retries_total{reason=\"unauthorized\""),
        "{}",
        exposed["/metrics"]
    );

    for (what, text) in &exposed {
        for token in [TOKEN_A, TOKEN_B, TOKEN_BAD] {
            assert!(
                !text.contains(token),
                "the token {token} appears in {what}: {}",
                text.lines()
                    .filter(|l| l.contains(token))
                    .take(3)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    assert!(!logs.contains("panicked"), "a panic: {logs}");
    assert!(
        written_to.is_empty(),
        "files open for writing: {written_to:?}"
    );
    for dir in [&cwd, &tmp, &home] {
        assert_eq!(
            entries(dir.path()),
            Vec::<PathBuf>::new(),
            "the relay wrote into {}",
            dir.path().display()
        );
    }
}

/// The `USER` of the Dockerfile's final stage as (uid, gid).
fn image_user() -> (u32, u32) {
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    let final_stage = dockerfile
        .rsplit_once("\nFROM ")
        .expect("a multi-stage Dockerfile")
        .1;
    let base = final_stage.lines().next().unwrap();
    assert!(
        base.contains(":nonroot@sha256:"),
        "the runtime base is distroless's nonroot variant, pinned: {base}"
    );
    let user = final_stage
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("USER "))
        .expect("the final stage sets USER");
    let (uid, gid) = user
        .trim()
        .split_once(':')
        .unwrap_or_else(|| panic!("USER {user} names uid:gid"));
    let parse = |id: &str| {
        id.parse::<u32>().unwrap_or_else(|_| {
            panic!("USER {user} must be numeric, so runAsNonRoot can verify it")
        })
    };
    (parse(uid), parse(gid))
}

fn helm_template(values: &[&str]) -> String {
    let helm = repo_root().join(".tools/bin/helm");
    assert!(
        helm.exists(),
        "{} is missing: run `make check-deploy` (scripts/install-deploy-tools.sh installs it)",
        helm.display()
    );
    let mut cmd = Command::new(helm);
    cmd.args(["template", "relay", "helm/dynamodb-nakadi-relay"])
        .current_dir(repo_root());
    for v in values {
        cmd.args(["-f", v]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_image_and_the_chart_run_as_one_numeric_non_root_user_without_writable_volumes() {
    let (uid, gid) = image_user();
    assert_ne!(uid, 0, "the image runs as root");
    assert_ne!(gid, 0, "the image runs with group root");
    for values in [
        &[][..],
        &["helm/dynamodb-nakadi-relay/ci/all-on-values.yaml"][..],
    ] {
        let rendered = helm_template(values);
        let ids = |key: &str| -> Vec<u32> {
            rendered
                .lines()
                .filter_map(|l| l.trim().strip_prefix(key))
                .map(|v| v.trim().parse().unwrap())
                .collect()
        };
        assert!(
            !ids("runAsUser:").is_empty() && ids("runAsUser:").iter().all(|&u| u == uid),
            "{values:?}: runAsUser {:?}, the image's user {uid}",
            ids("runAsUser:")
        );
        assert!(
            ids("runAsGroup:").iter().all(|&g| g == gid),
            "{values:?}: runAsGroup {:?}, the image's group {gid}",
            ids("runAsGroup:")
        );
        // The relay writes nothing: a scratch volume would only be a place to write to.
        for writable in ["emptyDir", "hostPath"] {
            assert!(
                !rendered.contains(writable),
                "{values:?}: a {writable} volume"
            );
        }
    }
}

/// The AWS operations of an SDK crate, from the module names of its `operation` folder.
fn sdk_operations(crate_name: &str) -> BTreeSet<String> {
    let lock = std::fs::read_to_string(repo_root().join("Cargo.lock")).unwrap();
    let version = lock
        .split("[[package]]")
        .find_map(|p| {
            p.contains(&format!("name = \"{crate_name}\"\n"))
                .then(|| p.split("version = \"").nth(1)?.split('"').next())
                .flatten()
        })
        .unwrap_or_else(|| panic!("{crate_name} in Cargo.lock"));
    let cargo_home = std::env::var("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cargo"));
    let registries = std::fs::read_dir(cargo_home.join("registry/src")).unwrap();
    let dir = registries
        .flatten()
        .map(|r| {
            r.path()
                .join(format!("{crate_name}-{version}/src/operation"))
        })
        .find(|d| d.is_dir())
        .unwrap_or_else(|| panic!("the sources of {crate_name} {version} in {cargo_home:?}"));
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The relay's source files, test modules in their own files left out.
fn source_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs")
                && p.file_name().is_some_and(|n| n != "tests.rs")
            {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&repo_root().join("src"), &mut files);
    files
}

/// `name` of every `.name()` call in the relay's non-test source, with the file it is in.
fn zero_argument_calls() -> Vec<(String, PathBuf)> {
    let mut calls = Vec::new();
    for file in source_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        let bytes = code.as_bytes();
        for (i, _) in code.match_indices('.') {
            let name: String = code[i + 1..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                .collect();
            if !name.is_empty() && bytes.get(i + 1 + name.len()..i + 3 + name.len()) == Some(b"()")
            {
                calls.push((name, file.clone()));
            }
        }
    }
    calls
}

/// The operations named after `prefix` in string literals of the non-test source.
fn signed_targets(prefix: &str) -> Vec<(String, PathBuf)> {
    let mut found = Vec::new();
    for file in source_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap();
        for (i, _) in code.match_indices(&format!("\"{prefix}")) {
            let operation: String = code[i + 1 + prefix.len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            found.push((operation, file.clone()));
        }
    }
    found
}

fn snake(pascal: &str) -> String {
    let mut out = String::new();
    for (i, c) in pascal.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// The one IAM policy document in the README or the operating guide it links to.
fn documented_policy() -> Value {
    let mut policies = Vec::new();
    for doc in ["README.md", "docs/operating.md"] {
        let text = std::fs::read_to_string(repo_root().join(doc)).unwrap();
        for block in text.split("```json").skip(1) {
            let block = block.split("```").next().unwrap();
            if block.contains("\"Statement\"") {
                policies.push(serde_json::from_str::<Value>(block).unwrap_or_else(|e| {
                    panic!("the IAM policy in {doc} is not JSON ({e}): {block}")
                }));
            }
        }
    }
    assert_eq!(policies.len(), 1, "one IAM policy in the docs");
    policies.pop().unwrap()
}

/// cloudformation/relay.yaml as JSON, its short-form tags (`!Sub`, `!GetAtt`) in their long
/// form, read by the tools venv's PyYAML (scripts/cfn-to-json.py).
fn cloudformation_template() -> Value {
    let python = repo_root().join(".tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make check-deploy` (scripts/install-deploy-tools.sh installs it)",
        python.display()
    );
    let out = Command::new(python)
        .args(["scripts/cfn-to-json.py", "cloudformation/relay.yaml"])
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The IAM prefix of each AWS SDK crate the relay may call. DynamoDB Streams' actions are
/// dynamodb:*.
const SDK_IAM_PREFIXES: &[(&str, &str)] = &[
    ("aws-sdk-dynamodb", "dynamodb"),
    ("aws-sdk-dynamodbstreams", "dynamodb"),
    ("aws-sdk-sqs", "sqs"),
    ("aws-sdk-s3", "s3"),
    ("aws-sdk-sts", "sts"),
];

/// Actions no policy needs to grant: AWS documents that every principal may call
/// GetCallerIdentity, even under an explicit deny.
const NEEDS_NO_PERMISSION: &[&str] = &["sts:GetCallerIdentity"];

/// The AWS SDK crates the relay depends on (Cargo.toml's [dependencies]), with their IAM prefix.
fn sdk_crates() -> Vec<(String, &'static str)> {
    let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let dependencies = manifest
        .split("\n[dependencies]\n")
        .nth(1)
        .expect("Cargo.toml has [dependencies]")
        .split("\n[")
        .next()
        .unwrap();
    let crates: Vec<(String, &str)> = dependencies
        .lines()
        .filter_map(|l| l.split(['=', ' ']).next())
        .filter(|name| name.starts_with("aws-sdk-"))
        .map(|name| {
            let prefix = SDK_IAM_PREFIXES
                .iter()
                .find(|(c, _)| *c == name)
                .unwrap_or_else(|| panic!("{name}: add its IAM prefix to SDK_IAM_PREFIXES"))
                .1;
            (name.to_owned(), prefix)
        })
        .collect();
    assert!(
        crates.len() >= 4,
        "the SDK crates of Cargo.toml: {crates:?}"
    );
    crates
}

/// The IAM actions of every AWS call in the relay's source, with the files that make it.
struct CalledActions {
    called: BTreeMap<String, BTreeSet<String>>,
    /// The operations of DynamoDB Streams, whose actions belong on the stream's ARN.
    streams_ops: BTreeSet<String>,
}

fn called_actions() -> CalledActions {
    let operations: Vec<(&str, BTreeSet<String>)> = sdk_crates()
        .iter()
        .map(|(c, prefix)| (*prefix, sdk_operations(c)))
        .collect();
    let streams_ops = sdk_operations("aws-sdk-dynamodbstreams");
    // (action, called from a stream module) for every SDK call in the source.
    let mut called: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut actions: Vec<(String, PathBuf)> = Vec::new();
    for (name, file) in zero_argument_calls() {
        let prefixes: BTreeSet<&str> = operations
            .iter()
            .filter(|(_, ops)| ops.contains(&name))
            .map(|(p, _)| *p)
            .collect();
        assert!(
            prefixes.len() <= 1,
            ".{name}() in {} is an operation of two services",
            file.display()
        );
        let Some(prefix) = prefixes.first() else {
            continue;
        };
        // SQS authorizes its batch calls with the single action (SendMessageBatch needs
        // sqs:SendMessage).
        let op = match (*prefix, name.strip_suffix("_batch")) {
            ("sqs", Some(single)) => single,
            _ => &name,
        };
        actions.push((format!("{prefix}:{}", pascal(op)), file));
    }
    // Calls the relay signs and sends itself name their operation in the `X-Amz-Target` header
    // (`DynamoDBStreams_20120810.GetRecords`).
    for (operation, file) in signed_targets("DynamoDBStreams_20120810.") {
        assert!(
            streams_ops.contains(&snake(&operation)),
            "{operation} in {} is no DynamoDB Streams operation",
            file.display()
        );
        actions.push((format!("dynamodb:{operation}"), file));
    }
    for (action, file) in actions {
        called.entry(action).or_default().insert(
            file.strip_prefix(repo_root())
                .unwrap()
                .display()
                .to_string(),
        );
    }
    // DynamoDB authorizes a transaction by the actions of its items, not by a
    // TransactWriteItems action: the lease take writes one update and one condition check.
    if let Some(files) = called.remove("dynamodb:TransactWriteItems") {
        for action in ["dynamodb:UpdateItem", "dynamodb:ConditionCheckItem"] {
            called
                .entry(action.to_owned())
                .or_default()
                .extend(files.iter().cloned());
        }
    }
    for action in NEEDS_NO_PERMISSION {
        called.remove(*action);
    }
    assert!(
        called.contains_key("dynamodb:GetRecords") && called.contains_key("sqs:SendMessage"),
        "the source scan found the relay's calls: {called:?}"
    );
    CalledActions {
        called,
        streams_ops,
    }
}

/// A statement's Resource as text, one per resource: an ARN, or what stands for one in
/// CloudFormation (the template of an `Fn::Sub`, `Resource.Attribute` of an `Fn::GetAtt`, the
/// name of a `Ref`), so that wildcards and stream ARNs can be told apart in both.
fn resource_texts(resource: &Value) -> Vec<String> {
    match resource {
        Value::String(arn) => vec![arn.clone()],
        Value::Array(list) => list.iter().flat_map(resource_texts).collect(),
        Value::Object(f) if f.len() == 1 => {
            let (function, arg) = f.iter().next().unwrap();
            match (function.as_str(), arg) {
                ("Fn::Sub", Value::String(template)) => vec![template.clone()],
                ("Fn::Sub", Value::Array(a)) => vec![a[0].as_str().unwrap().to_owned()],
                ("Fn::GetAtt", Value::Array(a)) => vec![format!(
                    "{}.{}",
                    a[0].as_str().unwrap(),
                    a[1].as_str().unwrap()
                )],
                ("Ref", Value::String(name)) => vec![name.clone()],
                _ => panic!("a Resource this test cannot read: {resource}"),
            }
        }
        other => panic!("Resource {other}"),
    }
}

/// The actions a policy document grants, each with its resources: only Allow, no wildcard
/// action or resource, stream actions on the stream and no others.
fn granted_actions(
    policy: &Value,
    source: &str,
    streams_ops: &BTreeSet<String>,
) -> BTreeMap<String, Vec<String>> {
    let mut granted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for statement in policy["Statement"].as_array().unwrap() {
        assert_eq!(statement["Effect"], "Allow", "{source}: {statement}");
        let resources = resource_texts(&statement["Resource"]);
        for resource in &resources {
            assert!(
                !resource.contains(":*:") && resource != "*",
                "{source}: a wildcard resource: {statement}"
            );
        }
        let actions: Vec<String> = match &statement["Action"] {
            Value::String(a) => vec![a.clone()],
            Value::Array(a) => a.iter().map(|a| a.as_str().unwrap().to_owned()).collect(),
            other => panic!("{source}: Action {other}"),
        };
        for action in actions {
            assert!(
                !action.contains('*'),
                "{source}: a wildcard action: {action}"
            );
            let op = action.split_once(':').unwrap().1;
            let is_stream_op = streams_ops.iter().any(|o| pascal(o) == op);
            for resource in &resources {
                assert_eq!(
                    is_stream_op,
                    resource.contains("/stream/"),
                    "{source}: {action} granted on {resource}: stream actions belong on the stream, others not"
                );
                granted
                    .entry(action.clone())
                    .or_default()
                    .push(resource.clone());
            }
        }
    }
    granted
}

/// The policy grants every action the relay calls and nothing else, except `left_out`: actions
/// the relay calls only in a setup this policy is not for, each with the reason.
fn assert_grants_exactly(
    policy: &Value,
    source: &str,
    relay: &CalledActions,
    left_out: &[(&str, &str)],
) {
    let granted = granted_actions(policy, source, &relay.streams_ops);
    let mut called = relay.called.clone();
    for (action, why) in left_out {
        assert!(
            called.remove(*action).is_some(),
            "{source}: {action} is left out ({why}), but the relay does not call it"
        );
        assert!(
            !granted.contains_key(*action),
            "{source}: {action} should be left out: {why}"
        );
    }
    let called_set: BTreeSet<&String> = called.keys().collect();
    let granted_set: BTreeSet<&String> = granted.keys().collect();
    let missing: Vec<_> = called_set.difference(&granted_set).collect();
    let unused: Vec<_> = granted_set.difference(&called_set).collect();
    assert!(
        missing.is_empty() && unused.is_empty(),
        "{source}: called but not granted: {:?}\ngranted but never called: {unused:?}",
        missing
            .iter()
            .map(|a| (a, &called[**a]))
            .collect::<HashMap<_, _>>()
    );
}

#[test]
fn the_documented_iam_policy_grants_exactly_the_actions_the_relay_calls() {
    assert_grants_exactly(
        &documented_policy(),
        "docs/operating.md",
        &called_actions(),
        &[],
    );
}

#[test]
fn the_cloudformation_iam_policy_grants_exactly_the_actions_the_relay_calls() {
    let template = cloudformation_template();
    let resources = template["Resources"].as_object().unwrap();
    let relay = called_actions();
    let policy = |name: &str| {
        let r = &resources[name];
        assert_eq!(r["Type"], "AWS::IAM::ManagedPolicy", "{name}");
        r["Properties"]["PolicyDocument"].clone()
    };
    assert_grants_exactly(
        &policy("RelayPolicy"),
        "cloudformation/relay.yaml RelayPolicy",
        &relay,
        &[(
            "dynamodb:CreateTable",
            "the template creates the lease table",
        )],
    );
    // The snapshot role's addition: the Scan of the source table, which the relay's role lacks.
    let scan = granted_actions(
        &policy("SnapshotScanPolicy"),
        "cloudformation/relay.yaml SnapshotScanPolicy",
        &relay.streams_ops,
    );
    assert_eq!(
        scan.keys().collect::<Vec<_>>(),
        ["dynamodb:Scan"],
        "SnapshotScanPolicy"
    );
    // Every policy of the template is one of these two, so no role gets more.
    let policies: BTreeSet<&String> = resources
        .iter()
        .filter(|(_, r)| r["Type"] == "AWS::IAM::ManagedPolicy" || r["Type"] == "AWS::IAM::Policy")
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        policies,
        BTreeSet::from([&"RelayPolicy".to_owned(), &"SnapshotScanPolicy".to_owned()]),
        "the template's policies"
    );
    for (name, r) in resources {
        if r["Type"] == "AWS::IAM::Role" {
            assert!(
                r["Properties"].get("Policies").is_none(),
                "{name}: inline policies escape this test; attach a managed one"
            );
        }
    }
}

/// A relay reading one shard of the Streams fault server through `edge`, with `env_changes`
/// applied to the usual environment; returns what it needs to write and check.
struct EdgeSetup {
    _moto: Moto,
    nakadi: Nakadi,
    streams: StreamsFault,
    arn: String,
    env: HashMap<String, String>,
}

async fn edge_setup(test: &str) -> EdgeSetup {
    let moto = Moto::start(test).await;
    let nakadi = Nakadi::start(test, &[]);
    let streams = StreamsFault::start(test);
    let arn = streams.ctl.create_stream(1, 5).await;
    let dlq = moto.create_queue("relay-dlq", &[]).await;
    let env = fault_env(&moto, &nakadi, &streams, &arn, &dlq);
    EdgeSetup {
        _moto: moto,
        nakadi,
        streams,
        arn,
        env,
    }
}

/// Waits until every written record's event arrived.
async fn wait_arrived(nakadi: &Nakadi, written: &[Written], what: &str) {
    let expected: HashSet<String> = written.iter().map(|w| w.eid.clone()).collect();
    wait_for_every(
        what,
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let arrived = nakadi.eids().await;
            expected.is_subset(&arrived).then_some(())
        },
    )
    .await;
}

/// Starts a relay with the setup's environment, writes two records and waits for their events.
async fn relay_two_records(test: &str, s: &EdgeSetup, what: &str) -> Relay {
    let relay = Relay::start(test, "relay-1", &s.env);
    relay.wait_ready().await;
    let written = s
        .streams
        .ctl
        .write(&s.arn, &[("order-1".into(), 1), ("order-2".into(), 2)])
        .await;
    wait_arrived(&s.nakadi, &written, what).await;
    relay
}

fn get_records_keys(stats: &Value) -> usize {
    stats["get_records_by_key"].as_object().unwrap().len()
}

/// The relay's own GetRecords path signs with the default chain's credentials and renews them
/// before they expire (container credentials that last 30 s, as ECS and EKS Pod Identity serve
/// them), and signs with the server's clock once a response showed that its own is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_records_renews_expiring_credentials_and_follows_the_server_clock() {
    let test = "security_edge_credentials";
    let mut s = edge_setup(test).await;
    let edge = Edge::start(test, &s.streams.ctl.url, &["--expiry", "30"]);
    s.env.remove("AWS_ACCESS_KEY_ID");
    s.env.remove("AWS_SECRET_ACCESS_KEY");
    s.env.insert(
        "AWS_CONTAINER_CREDENTIALS_FULL_URI".into(),
        format!("{}/_edge/creds", edge.url),
    );
    s.env
        .insert("AWS_ENDPOINT_URL_DYNAMODB_STREAMS".into(), edge.url.clone());
    let relay = Relay::start(test, "relay-1", &s.env);
    relay.wait_ready().await;
    let writer = Writer::start(
        s.streams.ctl.clone(),
        s.arn.clone(),
        4,
        Duration::from_millis(250),
    );
    // Three keys in turn: the first and two renewals, each before its predecessor expired.
    wait_for_every(
        "GetRecords signed with three keys in turn",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || async { (get_records_keys(&edge.stats().await) >= 3).then_some(()) },
    )
    .await;
    let stats = edge.stats().await;
    let expired: Vec<&Value> = stats["refused"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["target"].as_str().unwrap().ends_with(".GetRecords"))
        .collect();
    assert!(
        expired.is_empty(),
        "GetRecords refused before the clock moved: {expired:?}"
    );

    // The edge's clock jumps an hour ahead: signatures of our time are refused, and the
    // response's `Date` tells the relay the server's time.
    edge.set_clock_offset(3600).await;
    let moved = writer.count();
    wait_for_every(
        "a GetRecords refused for the clock",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || async {
            edge.stats().await["refused"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| {
                    r["target"].as_str().unwrap().ends_with(".GetRecords")
                        && r["reason"].as_str().unwrap().contains("Signature expired")
                })
                .then_some(())
        },
    )
    .await;
    wait_for_every(
        "records written after the clock moved",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async { (writer.count() >= moved + 20).then_some(()) },
    )
    .await;
    let written = writer.finish().await;
    wait_arrived(
        &s.nakadi,
        &written,
        "every record, before and after the clock moved",
    )
    .await;
    let refused = edge.stats().await["refused"].clone();
    let for_the_clock = refused
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["target"].as_str().unwrap().ends_with(".GetRecords"))
        .count();
    assert!(
        for_the_clock <= 2,
        "the clock should be corrected by the first refusal: {refused}"
    );
}

/// GetRecords to an HTTP endpoint goes through the proxy that `HTTP_PROXY` names, in absolute
/// form, with the URL's user and password as `Proxy-Authorization`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_records_goes_through_the_configured_proxy() {
    let test = "security_edge_proxy";
    let mut s = edge_setup(test).await;
    let proxy = Edge::start(test, "", &[]);
    s.env.insert("HTTP_PROXY".into(), with_credentials(&proxy));
    let _relay = relay_two_records(test, &s, "records read through the proxy").await;
    let stats = proxy.stats().await;
    assert!(
        stats["proxied_get_records"].as_u64().unwrap() > 0,
        "no GetRecords went through the proxy: {stats}"
    );
    assert_proxy_credentials(&stats);
}

/// The proxy's URL with user `relay` and password `s3cret`.
fn with_credentials(proxy: &Edge) -> String {
    proxy.url.replace("http://", "http://relay:s3cret@")
}

/// The proxy was sent the credentials of [`with_credentials`].
fn assert_proxy_credentials(stats: &Value) {
    assert!(
        stats["proxy_authorizations"]
            .as_array()
            .unwrap()
            .contains(&json!("Basic cmVsYXk6czNjcmV0")),
        "the proxy's credentials: {stats}"
    );
}

/// An edge with TLS under its own CA in front of the Streams fault server, accepting the
/// static test key, as the relay's Streams endpoint, its CA in `SSL_CERT_FILE`.
fn tls_endpoint(test: &str, s: &mut EdgeSetup) -> Edge {
    let edge = Edge::start(
        test,
        &s.streams.ctl.url,
        &["--tls", "--static-key", "test:test"],
    );
    s.env
        .insert("AWS_ENDPOINT_URL_DYNAMODB_STREAMS".into(), edge.url.clone());
    s.env.insert(
        "SSL_CERT_FILE".into(),
        edge.ca.as_ref().unwrap().display().to_string(),
    );
    edge
}

fn assert_signed_with_the_static_key(stats: &Value) {
    assert!(
        get_records_keys(stats) == 1 && stats["refused"].as_array().unwrap().is_empty(),
        "GetRecords over TLS, signed with the static key: {stats}"
    );
}

/// GetRecords to an HTTPS endpoint goes through a CONNECT tunnel of the proxy that
/// `HTTPS_PROXY` names, authenticated, with TLS end to end under the CA of `SSL_CERT_FILE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_records_tunnels_through_the_configured_proxy_to_an_https_endpoint() {
    let test = "security_edge_tunnel";
    let mut s = edge_setup(test).await;
    let edge = tls_endpoint(test, &mut s);
    let proxy = Edge::start(test, "", &[]);
    s.env.insert("HTTPS_PROXY".into(), with_credentials(&proxy));
    let _relay = relay_two_records(test, &s, "records read through the tunnel").await;
    let tunnels = proxy.stats().await;
    let stats = edge.stats().await;
    // The SDK's calls (DescribeStream, GetShardIterator) take tunnels of their own; the edge
    // tells which connection GetRecords came by from the port each tunnel left from.
    let tunnel_ports: Vec<&Value> = tunnels["tunnels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| &t["from_port"])
        .collect();
    let port = edge.url.rsplit(':').next().unwrap();
    assert!(
        tunnels["tunnels"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["to"] == format!("localhost:{port}")),
        "tunnels to the endpoint only: {tunnels}"
    );
    let from = stats["get_records_from_ports"].as_array().unwrap();
    assert!(
        !from.is_empty() && from.iter().all(|p| tunnel_ports.contains(&p)),
        "every GetRecords through a tunnel: {stats} {tunnels}"
    );
    assert_proxy_credentials(&tunnels);
    assert_signed_with_the_static_key(&stats);
}

/// A Streams endpoint whose certificate a private CA signed is trusted once `SSL_CERT_FILE`
/// names that CA, by the SDK's calls and the relay's own GetRecords alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_records_trusts_the_ca_bundle_in_ssl_cert_file() {
    let test = "security_edge_tls";
    let mut s = edge_setup(test).await;
    let edge = tls_endpoint(test, &mut s);
    let _relay = relay_two_records(test, &s, "records read over TLS").await;
    let stats = edge.stats().await;
    assert_signed_with_the_static_key(&stats);
}
