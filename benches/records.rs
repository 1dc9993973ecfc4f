//! Locating the records of a GetRecords response body (`stream::capture`), per record.
//!
//! `cargo bench --bench records`. A page of 1,000 MODIFY records of the 1 KB order (3 KB each
//! with both images): spelled as AWS spells it (compact), which the scan locates, and the same
//! page spaced out, which the scan refuses and serde's borrowing parse reads (the path every page
//! took before the scan). The UTF-8 check of the body, done once before either, is measured apart.
//! `scan_escaped`: a page of records whose one attribute holds a JSON document as text (1.6 KB,
//! escapes throughout), the scan's slower path.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dynamodb_nakadi_relay::stream::page::RecordsPage;

const MODIFY_1KB: &str = include_str!("../tests/fixtures/transform/order-modify.json");
const RECORDS: usize = 1_000;

fn page(record: &str, separator: &str) -> String {
    let records = vec![record; RECORDS].join(separator);
    format!(
        r#"{{"Records":[{records}],"NextShardIterator":"arn:aws:dynamodb:eu-central-1:1:table/t/stream/2026|1|AAAA"}}"#
    )
}

/// The MODIFY's new image as the text of a string attribute, as outbox tables often keep it.
fn escaped_record() -> String {
    let modify: serde_json::Value = serde_json::from_str(MODIFY_1KB).unwrap();
    let document = serde_json::to_string(&modify["dynamodb"]["NewImage"]).unwrap();
    serde_json::to_string(&serde_json::json!({
        "eventID": "1",
        "eventName": "INSERT",
        "dynamodb": {"NewImage": {"payload": {"S": document}}},
    }))
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let modify = MODIFY_1KB.trim_end();
    let escaped = escaped_record();
    let compact = page(modify, ",");
    let spaced = page(modify, " , ");
    let compact_escaped = page(&escaped, ",");
    let mut group = c.benchmark_group("records_page");
    group.throughput(Throughput::Elements(RECORDS as u64));
    for (name, body, first) in [
        ("scan", &compact, modify),
        ("serde", &spaced, modify),
        ("scan_escaped", &compact_escaped, &escaped),
    ] {
        let page = RecordsPage::parse(body.clone()).unwrap();
        assert_eq!(page.len(), RECORDS, "{name}");
        assert_eq!(page.records().next(), Some(first));
        group.bench_function(name, |b| {
            b.iter_batched(
                || body.clone(),
                |body| RecordsPage::parse(black_box(body)).unwrap(),
                criterion::BatchSize::LargeInput,
            )
        });
    }
    let bytes = compact.clone().into_bytes();
    group.bench_function("utf8_check", |b| {
        b.iter(|| std::str::from_utf8(black_box(&bytes)).is_ok())
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
