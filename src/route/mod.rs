//! A table's routes at run time: which event type each record goes to, and a publisher per
//! route (`transform::condition` has the conditions and their evaluation).
//!
//! A record takes the first route whose condition holds on its images: new and old for a
//! MODIFY, the new one for an INSERT, the old one for a REMOVE. A MODIFY whose two images route
//! apart *moves*: its old route gets a `D` event of the old image and its new route a `C` event
//! of the new image, so each event type's consumers see their entities come and go. Both carry
//! the record's eid (Nakadi scopes eids per event type), and the record counts as done only once
//! both are. A record no route takes is filtered.
//!
//! One route without a condition (every table without `[[table.route]]`) decides nothing and
//! publishes as before routes existed.

use std::borrow::Cow;

use futures::future::join_all;
use serde_json::Value;

use crate::transform::condition::images;
pub use crate::transform::condition::{Condition, Router};

use crate::delivery::Publish;
use crate::filter::{self, Filter, Filtered, Skip};
use crate::nakadi::{Gate, Outcome, Publisher, Publishing};
use crate::transform::{Event, EventSettings, Routed, transform_routed};

/// One route's event type and what its events are.
pub struct Lane {
    pub publisher: Publisher,
    pub settings: EventSettings,
    pub filter: Filter,
}

impl Lane {
    pub fn event_type(&self) -> &str {
        self.publisher.event_type()
    }

    /// The record filtered and transformed as this route's.
    fn apply<'r>(&self, raw: &'r str) -> Filtered<'r> {
        self.filter.apply(raw, &self.settings)
    }
}

/// A table's routes, in order.
pub struct Routes {
    pub lanes: Vec<Lane>,
    /// None for a single route without a condition: every record takes it.
    router: Option<Router>,
    /// No route filters or drops anything: records are routed while the transform reads them
    /// ([`transform_routed`]). A filter reads the record before the transform does, so a table
    /// with one routes first, on the record's text.
    in_transform: bool,
}

/// Where one record's events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// Its event goes to this route.
    One(usize),
    /// No route takes it: filtered.
    Unrouted,
    /// A MODIFY whose old image takes route `from` and whose new image takes route `to` (each
    /// None when no route takes that image): a `D` event on the one, a `C` event on the other.
    Moved {
        from: Option<usize>,
        to: Option<usize>,
    },
}

impl Routes {
    /// `conditions` has one entry per lane, in order.
    pub fn new(lanes: Vec<Lane>, conditions: Vec<Option<Condition>>) -> Routes {
        assert_eq!(lanes.len(), conditions.len(), "one condition per route");
        let router = match conditions.as_slice() {
            [None] => None,
            _ => Some(Router::new(conditions)),
        };
        let in_transform = lanes.iter().all(|lane| lane.filter.is_pass_through());
        Routes {
            lanes,
            router,
            in_transform,
        }
    }

    /// What becomes of one record, given to `each` with its route: one event, or a moved
    /// record's two (the old route's `D` first, so that a consumer of both event types sees
    /// the entity leave one before it arrives in the other).
    pub fn apply(&self, raw: &str, mut each: impl FnMut(usize, Filtered<'_>)) {
        if let (Some(router), true) = (&self.router, self.in_transform) {
            match transform_routed(raw, router, |route| &self.lanes[route].settings) {
                Routed::Event(event) => return each(event.route, Filtered::Event(event)),
                Routed::Unrouted { sequence_number } => {
                    return each(
                        0,
                        Filtered::Skipped {
                            sequence_number,
                            reason: Skip::NoRoute,
                        },
                    );
                }
                Routed::Undecided => {}
            }
        }
        let lane = |route: usize| &self.lanes[route];
        match self.decide(raw) {
            Decision::One(route) => each(route, lane(route).apply(raw)),
            Decision::Unrouted => {
                each(
                    0,
                    filter::unrouted(raw).unwrap_or_else(|| lane(0).apply(raw)),
                );
            }
            Decision::Moved { from, to } => {
                for (route, name) in [(from, "REMOVE"), (to, "INSERT")] {
                    if let Some(route) = route {
                        each(route, lane(route).apply(&moved_record(raw, name)));
                    }
                }
            }
        }
    }

    /// Where `raw`'s events go, decided on its text.
    fn decide(&self, raw: &str) -> Decision {
        let Some(router) = &self.router else {
            return Decision::One(0);
        };
        // A record whose images cannot be located is malformed: the first route's transform
        // turns it into a dead letter that says why.
        let Some(images) = images(raw) else {
            return Decision::One(0);
        };
        let new = images.new.map(|image| router.route(image));
        let old = images.old.map(|image| router.route(image));
        match (new, old) {
            (Some(to), Some(from)) if to == from => to.map_or(Decision::Unrouted, Decision::One),
            (Some(to), Some(from)) => Decision::Moved { from, to },
            (Some(only), None) | (None, Some(only)) => {
                only.map_or(Decision::Unrouted, Decision::One)
            }
            (None, None) => Decision::One(0),
        }
    }

    /// The route of an item's image (DynamoDB JSON), as an INSERT of it would take.
    pub fn route_image(&self, image: &str) -> Option<usize> {
        match &self.router {
            None => Some(0),
            Some(router) => router.route(image),
        }
    }

    /// The event types of the routes, in order.
    pub fn event_types(&self) -> impl Iterator<Item = &str> {
        self.lanes.iter().map(Lane::event_type)
    }
}

/// A moved MODIFY as the record its route sees: the old image removed (`REMOVE` keeps only the
/// old image) or the new image inserted (`INSERT` keeps only the new one). Rewritten through
/// `serde_json::Value` (numbers keep their digits: `arbitrary_precision`); moves are rare.
pub fn moved_record<'a>(raw: &'a str, name: &'static str) -> Cow<'a, str> {
    let Ok(mut record) = serde_json::from_str::<Value>(raw) else {
        return Cow::Borrowed(raw);
    };
    let drop = if name == "REMOVE" {
        "NewImage"
    } else {
        "OldImage"
    };
    record["eventName"] = Value::String(name.to_owned());
    if let Some(Value::Object(dynamodb)) = record.get_mut("dynamodb") {
        dynamodb.remove(drop);
    }
    Cow::Owned(record.to_string())
}

impl Publish for Routes {
    /// Each route's events go to its own publisher, with its own batching, all at once; the
    /// outcomes come back in the order of `events`.
    async fn publish(
        &self,
        events: &[Event],
        who: Publishing<'_>,
        gate: &Gate<'_>,
    ) -> Vec<Outcome> {
        if let [lane] = self.lanes.as_slice() {
            return lane.publisher.publish(events, who, gate).await;
        }
        let mut positions: Vec<Vec<usize>> = vec![Vec::new(); self.lanes.len()];
        for (i, event) in events.iter().enumerate() {
            positions[event.route].push(i);
        }
        let publishing = positions
            .iter()
            .enumerate()
            .filter(|(_, at)| !at.is_empty())
            .map(|(route, at)| {
                // Clones share the event's bytes.
                let mine: Vec<Event> = at.iter().map(|&i| events[i].clone()).collect();
                async move {
                    let outcomes = self.lanes[route].publisher.publish(&mine, who, gate).await;
                    (route, outcomes)
                }
            });
        let mut outcomes: Vec<Option<Outcome>> = vec![None; events.len()];
        for (route, published) in join_all(publishing).await {
            for (&i, outcome) in positions[route].iter().zip(published) {
                outcomes[i] = Some(outcome);
            }
        }
        outcomes
            .into_iter()
            .map(|o| o.expect("every event was published by its route"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_record_keeps_one_image_under_the_new_name() {
        let raw = r#"{"eventID":"e1","eventName":"MODIFY","dynamodb":{"ApproximateCreationDateTime":1.7637921701E9,"NewImage":{"n":{"N":"1.50"}},"OldImage":{"n":{"N":"2"}},"SequenceNumber":"100"}}"#;
        let removed: Value = serde_json::from_str(&moved_record(raw, "REMOVE")).unwrap();
        assert_eq!(removed["eventName"], "REMOVE");
        assert!(removed["dynamodb"].get("NewImage").is_none());
        assert_eq!(removed["dynamodb"]["OldImage"]["n"]["N"], "2");
        let inserted = moved_record(raw, "INSERT");
        assert!(
            inserted.contains(r#""NewImage":{"n":{"N":"1.50"}}"#),
            "{inserted}"
        );
        // The creation time keeps its digits, if not its spelling.
        assert!(inserted.contains("1.7637921701"), "{inserted}");
        assert!(!inserted.contains("OldImage"), "{inserted}");
    }
}
