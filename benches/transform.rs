//! The transform's cost per record, from the stream record as the relay receives it (the raw JSON
//! of one element of GetRecords' `Records`) to the serialized event bytes.
//!
//! `cargo bench --bench transform`. Three records: a MODIFY of an order of about 1 KB (21
//! attributes, a list of maps, a string set), the INSERT of that order, and a MODIFY of an
//! order of about 100 KB. Each on the fast path and on the reference path. And the 1 KB MODIFY
//! routed among three routes (`routed`): both images routed while the transform reads them, as
//! the shard worker does for a table with `[[table.route]]`s.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use dynamodb_nakadi_relay::route::{Condition, Router};
use dynamodb_nakadi_relay::transform::{
    EventSettings, Routed, transform, transform_reference, transform_routed,
};
use serde_json::{Value, json};

const MODIFY_1KB: &str = include_str!("../tests/fixtures/transform/order-modify.json");
const INSERT_1KB: &str = include_str!("../tests/fixtures/transform/order-insert.json");

/// The 1 KB MODIFY with its order grown to `lines` line items, one of which changes.
fn big_modify(lines: usize) -> String {
    let mut record: Value = serde_json::from_str(MODIFY_1KB).unwrap();
    for (image, quantity) in [("OldImage", "1"), ("NewImage", "2")] {
        let items = record["dynamodb"][image]["line_items"]["L"]
            .as_array_mut()
            .unwrap();
        let template = items[0].clone();
        items.clear();
        for i in 0..lines {
            let mut item = template.clone();
            item["M"]["sku"] = json!({"S": format!("SKU-{i:05}-BLK-42")});
            let q = if i == lines / 2 { quantity } else { "1" };
            item["M"]["quantity"] = json!({"N": q});
            items.push(item);
        }
    }
    serde_json::to_string(&record).unwrap()
}

fn bench(c: &mut Criterion) {
    let settings = EventSettings {
        data_type: "payments:order".into(),
        compaction_key: Some(vec!["order_id".into()]),
    };
    let big = big_modify(1000);
    let records = [
        ("modify_1kb", MODIFY_1KB.trim_end()),
        ("insert_1kb", INSERT_1KB.trim_end()),
        ("modify_100kb", big.as_str()),
    ];
    for (name, raw) in records {
        let fast = transform(raw, &settings).unwrap();
        let reference = transform_reference(raw, &settings).unwrap();
        assert_eq!(
            fast.body(),
            reference.body(),
            "{name}: both paths give the same event"
        );
        println!(
            "{name}: record {} bytes, event {} bytes",
            raw.len(),
            fast.body().len()
        );

        let mut group = c.benchmark_group(name);
        group.throughput(Throughput::Elements(1));
        group.bench_function("fast", |b| {
            b.iter(|| transform(black_box(raw), &settings).unwrap())
        });
        group.bench_function("reference", |b| {
            b.iter(|| transform_reference(black_box(raw), &settings).unwrap())
        });
        group.finish();
    }

    // The last route takes the order; the first two look at attributes early in the image.
    let router = Router::new(
        [
            r#"{ attribute = "currency", equals = "USD" }"#,
            r#"{ attribute = "order_id", begins_with = "RET-" }"#,
            r#"{ attribute = "status", any_of = ["PAID", "SHIPPED"] }"#,
        ]
        .iter()
        .map(|text| {
            let when: toml::Table = toml::from_str(&format!("when = {text}")).unwrap();
            Some(Condition::parse(&when["when"]).unwrap())
        })
        .collect(),
    );
    let raw = MODIFY_1KB.trim_end();
    let routed = |raw: &str| match transform_routed(raw, &router, |_| &settings) {
        Routed::Event(event) => event,
        other => panic!("the order takes the third route: {other:?}"),
    };
    assert_eq!(routed(raw).route, 2);
    let mut group = c.benchmark_group("modify_1kb");
    group.throughput(Throughput::Elements(1));
    group.bench_function("routed", |b| b.iter(|| routed(black_box(raw))));
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
