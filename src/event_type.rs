//! The `event-type` subcommand: the Nakadi event type a configured table's events need, as the
//! JSON body of `POST /event-types`. Built from the configuration alone, without AWS: the key
//! attributes are given on the command line, since only DescribeTable would know them.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value, json};

use crate::config::{Config, TableConfig};

/// What the configuration does not say: who owns the event type, the table's key, and what is
/// passed through to Nakadi as given.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub owning_application: String,
    /// Key attribute names in key-schema order: the hash key, then the range key if any.
    pub key: Vec<String>,
    pub audience: Option<String>,
    /// `EventTypeAuthorization` JSON (admins, readers, writers).
    pub authorization: Option<String>,
    /// `KEY=VALUE` pairs.
    pub labels: Vec<String>,
}

/// Why no event type can be made, and which setting or option to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub setting: &'static str,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.message)
    }
}

impl std::error::Error for Problem {}

fn problem(setting: &'static str, message: impl Into<String>) -> Problem {
    Problem {
        setting,
        message: message.into(),
    }
}

/// The body of `POST /event-types`, fields in the order the spec lists them.
#[derive(Debug, Serialize)]
pub struct EventType {
    pub name: String,
    pub owning_application: String,
    pub category: &'static str,
    pub enrichment_strategies: [&'static str; 1],
    pub partition_strategy: &'static str,
    pub compatibility_mode: &'static str,
    pub schema: Schema,
    pub partition_key_fields: Vec<String>,
    pub cleanup_policy: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Value>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub labels: Map<String, Value>,
    pub ordering_key_fields: [&'static str; 1],
    pub ordering_instance_ids: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Schema {
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The JSON Schema of `data`, as text: Nakadi takes the schema as a string.
    pub schema: String,
}

/// The configured table `name` picks (`--table`); with one table it may be left out.
pub fn pick<'a>(config: &'a Config, name: Option<&str>) -> Result<&'a TableConfig, Problem> {
    let chosen = match name {
        Some(name) => config.tables.iter().find(|t| t.name() == name),
        None if config.tables.len() == 1 => config.tables.first(),
        None => None,
    };
    chosen.ok_or_else(|| {
        let names: Vec<&str> = config.tables.iter().map(|t| t.name()).collect();
        problem(
            "--table",
            format!(
                "choose a configured table with --table, one of {}",
                names.join(", ")
            ),
        )
    })
}

/// The event types of `table`'s events, one per route in route order.
pub fn build(table: &TableConfig, options: &Options) -> Result<Vec<EventType>, Problem> {
    let key = &options.key;
    if key.is_empty() || key.len() > 2 {
        return Err(problem(
            "--key",
            "give the table's hash key, or its hash and range key: --key pk or --key pk,sk",
        ));
    }
    for name in key {
        if name.is_empty() {
            return Err(problem("--key", "a key attribute name is empty"));
        }
        // Nakadi reads partition_key_fields and the ordering fields as dot-separated paths, so
        // a dot inside a name would point at a nested field that does not exist.
        if name.contains('.') {
            return Err(problem(
                "--key",
                format!(
                    "key attribute {name:?} contains a dot, which Nakadi's field paths cannot express"
                ),
            ));
        }
        // Hash partitioning reads the key from `item`; a dropped key leaves nothing to hash.
        if let Some(route) = table
            .routes
            .iter()
            .find(|r| r.filter.drop_attributes.iter().any(|d| d == name))
        {
            return Err(problem(
                "RELAY_DROP_ATTRIBUTES",
                format!(
                    "event type {} drops key attribute {name:?} of table {}, which hash partitioning needs in every event",
                    route.event_type,
                    table.name()
                ),
            ));
        }
    }
    if options.owning_application.trim().is_empty() {
        return Err(problem("--owning-application", "must not be empty"));
    }
    let authorization = options
        .authorization
        .as_deref()
        .map(|raw| match serde_json::from_str::<Value>(raw) {
            Ok(v @ Value::Object(_)) => Ok(v),
            _ => Err(problem(
                "--authorization",
                "must be a JSON object with admins, readers and writers",
            )),
        })
        .transpose()?;
    let mut labels = Map::new();
    for label in &options.labels {
        let Some((k, v)) = label.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(problem(
                "--label",
                format!("must be KEY=VALUE (got {label:?})"),
            ));
        };
        labels.insert(k.to_owned(), Value::String(v.to_owned()));
    }
    let item_paths = |prefix: &str| key.iter().map(|k| format!("{prefix}{k}")).collect();
    Ok(table
        .routes
        .iter()
        .map(|route| EventType {
            name: route.event_type.clone(),
            owning_application: options.owning_application.clone(),
            category: "data",
            enrichment_strategies: ["metadata_enrichment"],
            partition_strategy: "hash",
            // `compatible` would forbid every property the schema does not list, so a new table
            // attribute would make Nakadi refuse the events.
            compatibility_mode: "forward",
            schema: Schema {
                kind: "json_schema",
                schema: data_schema(key).to_string(),
            },
            // Relative to `data` for data change events; relative to the whole event below.
            partition_key_fields: item_paths("item."),
            // Compaction keeps the last event per partition_compaction_key, which the relay sets
            // only with RELAY_COMPACTION_KEY.
            cleanup_policy: if route.compaction_key {
                "compact"
            } else {
                "delete"
            },
            authorization: authorization.clone(),
            labels: labels.clone(),
            ordering_key_fields: ["data.sequence_number"],
            ordering_instance_ids: item_paths("data.item."),
            audience: options.audience.clone(),
        })
        .collect())
}

/// The JSON Schema (draft 4, the one Nakadi reads) of an event's `data`. Open to properties it
/// does not list, so that new attributes and new optional fields stay valid.
pub fn data_schema(key: &[String]) -> Value {
    // S, N and B: a string, the number's exact digits, or base64.
    let key_properties: Map<String, Value> = key
        .iter()
        .map(|k| (k.clone(), json!({"type": ["string", "number"]})))
        .collect();
    json!({
        "type": "object",
        "required": ["item", "patch"],
        "properties": {
            "item": {
                "description": "The item after the change (before it for D), as plain JSON.",
                "type": "object",
                "required": key,
                "properties": key_properties,
            },
            "patch": {
                "description": "RFC 6902 operations from the old item to the new one.",
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["op", "path"],
                    "properties": {
                        "op": {"enum": ["add", "remove", "replace", "move", "copy", "test"]},
                        "path": {"type": "string"},
                        "from": {"type": "string"},
                        "value": {},
                    },
                },
            },
            // Optional: a snapshot's S events read an item, not a change, and events
            // dead-lettered by versions before it existed are re-drained without it.
            "sequence_number": {
                "description": "The stream record's sequence number, zero-padded to 40 digits so that text order is number order.",
                "type": "string",
                "pattern": "^[0-9]{40,}$",
            },
            "ttl_expired": {
                "description": "true on the D event of a TTL expiry (RELAY_TTL_DELETES=mark).",
                "type": "boolean",
            },
        },
    })
}

#[cfg(test)]
mod tests {

    use super::*;

    fn config(extra: &[(&str, &str)]) -> Config {
        Config::example(extra)
    }

    fn options(key: &[&str]) -> Options {
        Options {
            owning_application: "stups_orders".into(),
            key: key.iter().map(|k| k.to_string()).collect(),
            ..Options::default()
        }
    }

    fn built(extra: &[(&str, &str)], options: &Options) -> Result<Value, Problem> {
        let config = config(extra);
        let table = pick(&config, None)?;
        build(table, options).map(|types| {
            assert_eq!(types.len(), 1, "a table without routes has one event type");
            serde_json::to_value(&types[0]).unwrap()
        })
    }

    #[test]
    fn a_hash_key_table() {
        let e = built(&[], &options(&["pk"])).unwrap();
        let schema: Value = serde_json::from_str(e["schema"]["schema"].as_str().unwrap()).unwrap();
        assert_eq!(schema, data_schema(&["pk".into()]));
        let mut without_schema = e.clone();
        without_schema.as_object_mut().unwrap().remove("schema");
        assert_eq!(
            without_schema,
            json!({
                "name": "payments.order-changed",
                "owning_application": "stups_orders",
                "category": "data",
                "enrichment_strategies": ["metadata_enrichment"],
                "partition_strategy": "hash",
                "compatibility_mode": "forward",
                "partition_key_fields": ["item.pk"],
                "cleanup_policy": "delete",
                "ordering_key_fields": ["data.sequence_number"],
                "ordering_instance_ids": ["data.item.pk"],
            })
        );
        assert_eq!(e["schema"]["type"], "json_schema");
        assert_eq!(schema["properties"]["item"]["required"], json!(["pk"]));
        assert_eq!(schema["required"], json!(["item", "patch"]));
    }

    #[test]
    fn a_range_key_the_compaction_key_and_what_is_passed_through() {
        let mut o = options(&["pk", "sk"]);
        o.audience = Some("company-internal".into());
        o.authorization = Some(
            r#"{"admins":[{"data_type":"team","value":"payments"}],"readers":[{"data_type":"*","value":"*"}],"writers":[{"data_type":"service","value":"relay"}]}"#
                .into(),
        );
        o.labels = vec!["tier=1".into(), "owner=payments=team".into()];
        let e = built(&[("RELAY_COMPACTION_KEY", "true")], &o).unwrap();
        assert_eq!(e["cleanup_policy"], "compact");
        assert_eq!(e["partition_key_fields"], json!(["item.pk", "item.sk"]));
        assert_eq!(
            e["ordering_instance_ids"],
            json!(["data.item.pk", "data.item.sk"])
        );
        assert_eq!(e["audience"], "company-internal");
        assert_eq!(e["authorization"]["readers"][0]["value"], "*");
        assert_eq!(e["labels"], json!({"tier": "1", "owner": "payments=team"}));
    }

    #[test]
    fn refusals_name_the_setting() {
        let setting = |extra: &[(&str, &str)], o: &Options| built(extra, o).unwrap_err().setting;
        assert_eq!(setting(&[], &options(&["order.id"])), "--key");
        assert_eq!(setting(&[], &options(&[])), "--key");
        assert_eq!(setting(&[], &options(&["a", "b", "c"])), "--key");
        assert_eq!(setting(&[], &options(&[""])), "--key");
        assert_eq!(
            setting(
                &[("RELAY_DROP_ATTRIBUTES", "email,sk")],
                &options(&["pk", "sk"])
            ),
            "RELAY_DROP_ATTRIBUTES"
        );
        let mut o = options(&["pk"]);
        o.authorization = Some("[1]".into());
        assert_eq!(setting(&[], &o), "--authorization");
        let mut o = options(&["pk"]);
        o.labels = vec!["tier".into()];
        assert_eq!(setting(&[], &o), "--label");
        let mut o = options(&["pk"]);
        o.owning_application = " ".into();
        assert_eq!(setting(&[], &o), "--owning-application");
    }

    #[test]
    fn a_table_not_configured_is_refused_naming_table() {
        let config = config(&[]);
        assert_eq!(
            pick(&config, Some("refunds")).unwrap_err().setting,
            "--table"
        );
        assert_eq!(pick(&config, Some("orders")).unwrap().name(), "orders");
    }
}
