//! What Kubernetes and Prometheus see: probes through SIGTERM and outages, and a real
//! Prometheus server scraping the relay and evaluating every dashboard and alert expression.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::*;

struct Env {
    moto: Moto,
    nakadi: Nakadi,
    stream_arn: String,
    env: HashMap<String, String>,
}

async fn setup(test: &str) -> Env {
    let moto = Moto::start(test).await;
    let nakadi = Nakadi::start(test, &[]);
    let arn = moto.create_table("orders").await;
    let dlq = moto.create_queue("relay-dlq", &[]).await;
    let env = base_env(&moto, &nakadi, &arn, "relay-leases", &dlq);
    Env {
        moto,
        nakadi,
        stream_arn: arn,
        env,
    }
}

async fn lease_owner(moto: &Moto) -> Option<String> {
    lease_items(moto, "relay-leases", "shard")
        .await
        .ok()?
        .iter()
        .find_map(|i| i.get("owner").and_then(|o| o.as_s().ok()).cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_503_on_sigterm_before_the_leases_are_released() {
    let test = "probes_sigterm";
    let t = setup(test).await;
    // A slow Nakadi keeps a page in flight, so the drain takes a while.
    t.nakadi.fault(json!({"latency_ms": 1500})).await;
    let mut relay = Relay::start(test, "relay-1", &t.env);
    relay.wait_ready().await;
    put_orders(&t.moto, 0..5).await;
    wait_for(
        "a publish request in flight",
        Duration::from_secs(30),
        || async {
            let (_, m) = relay.get("/metrics").await?;
            m.lines()
                .any(|l| l.starts_with("relay_records_read_total{") && l.ends_with(" 5"))
                .then_some(())
        },
    )
    .await;
    // Every AWS request is counted by its operation: the records came from GetRecords calls, and
    // the pod's heartbeat is an UpdateItem of the lease table.
    let (_, m) = relay.get("/metrics").await.expect("metrics");
    for operation in ["GetRecords", "UpdateItem"] {
        let series = format!("relay_aws_requests_total{{operation=\"{operation}\"}} ");
        let count: f64 = m
            .lines()
            .find_map(|l| l.strip_prefix(&series))
            .unwrap_or_else(|| panic!("no {series}in:\n{m}"))
            .parse()
            .unwrap();
        assert!(count > 0.0, "{series}is {count}");
    }
    relay.process.signal("TERM");
    let (ready, owner) = wait_for(
        "readiness 503 during the drain",
        Duration::from_secs(10),
        || async {
            let (code, _) = relay.get("/health/ready").await?;
            (code == 503).then_some(code)?;
            Some((code, lease_owner(&t.moto).await))
        },
    )
    .await;
    assert_eq!(ready, 503);
    assert_eq!(
        owner.as_deref(),
        Some("relay-1"),
        "the lease was released before readiness turned 503"
    );
    let status = relay.process.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        lease_owner(&t.moto).await,
        None,
        "the lease is released on exit"
    );
    assert_eq!(
        t.nakadi.events().await.len(),
        5,
        "the page in flight was finished"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn liveness_stays_200_while_nakadi_and_aws_are_unreachable() {
    let test = "probes_outage";
    let mut t = setup(test).await;
    let aws = FaultProxy::start(&t.moto.endpoint).await;
    t.env.insert("AWS_ENDPOINT_URL".into(), aws.url.clone());
    let relay = Relay::start(test, "relay-1", &t.env);
    relay.wait_ready().await;
    aws.set_down(true);
    drop(t.nakadi); // Nakadi gone too
    put_orders(&t.moto, 0..3).await;
    // Observe for several coordinator rounds (500 ms each in tests): every probe answers 200.
    let until = Instant::now() + Duration::from_secs(5);
    let mut probes = 0;
    while Instant::now() < until {
        let (live, _) = relay
            .get("/health/live")
            .await
            .expect("the HTTP server answers");
        assert_eq!(live, 200, "liveness failed during the outage");
        let (ready, _) = relay.get("/health/ready").await.unwrap();
        assert_eq!(
            ready, 200,
            "readiness must not follow Nakadi or a passing AWS outage"
        );
        probes += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(probes >= 10);
    let (_, m) = relay.get("/metrics").await.unwrap();
    // Every series exists at 0 from start: counted means some of them rose.
    let errors: f64 = m
        .lines()
        .filter(|l| l.starts_with("relay_aws_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(errors > 0.0, "AWS errors are counted: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_evaluates_every_dashboard_and_alert_expression() {
    let test = "prometheus_scrape";
    let t = setup(test).await;
    let relay = Relay::start(test, "relay-1", &t.env);
    relay.wait_ready().await;
    // Some traffic, including a rejected event, so publish and DLQ series have data.
    put_orders(&t.moto, 0..20).await;
    t.nakadi.fault(json!({"status": 422, "times": 1})).await;
    put_orders(&t.moto, 20..25).await;
    let addr = relay
        .http_url()
        .await
        .trim_start_matches("http://")
        .to_owned();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg(repo_root().join("scripts/check-promql.sh"))
            .arg(addr)
            .output()
            .expect("running scripts/check-promql.sh (make test installs prometheus)")
    })
    .await
    .unwrap();
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(output_dir(test).join("check-promql.log"), &report).unwrap();
    assert!(out.status.success(), "check-promql failed:\n{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_unreachable_at_start_is_waited_out_and_sigterm_meanwhile_exits_0() {
    let test = "probes_startup";
    let mut t = setup(test).await;
    let aws = FaultProxy::start(&t.moto.endpoint).await;
    t.env.insert("AWS_ENDPOINT_URL".into(), aws.url.clone());
    aws.set_down(true);
    // A relay started during the outage, once it has retried a start-up check.
    let start_retrying = |name: &'static str| {
        let relay = Relay::start(test, name, &t.env);
        async move {
            wait_for(
                "a retried start-up check",
                Duration::from_secs(30),
                || async {
                    relay
                        .logs()
                        .contains("a start-up check failed for a reason that may pass")
                        .then_some(())
                },
            )
            .await;
            relay
        }
    };

    // An outage at start is not a configuration error: the relay waits it out, then starts.
    let mut waiting = start_retrying("relay-1").await;
    assert!(
        waiting.process.child.try_wait().unwrap().is_none(),
        "exited during an outage: {}",
        waiting.logs()
    );
    aws.set_down(false);
    waiting.wait_ready().await;

    // SIGTERM while it waits: a clean exit, as on any other stop.
    aws.set_down(true);
    let mut stopped = start_retrying("relay-2").await;
    stopped.process.signal("TERM");
    let status = stopped.process.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "{}", stopped.logs());
}

/// `/status` shows a running shard's checkpoint as its worker last wrote it, not as the
/// coordinator's last scan of the lease table saw it: rounds here are far apart, so a status
/// built from the scan would still say TRIM_HORIZON once the page's checkpoint is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_checkpoint_of_the_last_delivered_page() {
    let test = "status_checkpoint";
    let mut t = setup(test).await;
    t.env
        .insert("RELAY_LEASE_RENEW_INTERVAL".into(), "8s".into());
    t.env.insert("RELAY_LEASE_DURATION".into(), "30s".into());
    let relay = Relay::start(test, "relay-1", &t.env);
    relay.wait_ready().await;
    let shard = |report: &serde_json::Value| report["shards"][0].clone();
    let status = || async {
        let (_, body) = relay.get("/status").await?;
        serde_json::from_str::<serde_json::Value>(&body).ok()
    };
    wait_for("the shard owned", Duration::from_secs(30), || async {
        let report = status().await?;
        (shard(&report)["owner"] == "relay-1").then_some(())
    })
    .await;
    put_orders(&t.moto, 0..3).await;
    let last = stream_records(&t.moto, &t.stream_arn)
        .await
        .last()
        .unwrap()
        .1
        .clone();
    wait_for(
        "three events delivered and checkpointed",
        Duration::from_secs(30),
        || async {
            (t.nakadi.events().await.len() == 3
                && checkpoints(&t.moto, "relay-leases").await == vec![last.clone()])
            .then_some(())
        },
    )
    .await;
    // Well within one coordinator round.
    let report = wait_for(
        "/status with the new checkpoint",
        Duration::from_secs(2),
        || async {
            let report = status().await?;
            (shard(&report)["checkpoint"] == last.as_str()).then_some(report)
        },
    )
    .await;
    assert_eq!(shard(&report)["state"], "owned", "{report}");
    assert_eq!(shard(&report)["lag_seconds"], 0.0, "{report}");
}
