//! The fast path: the stream record read once and written as the event's bytes.
//!
//! The new image is written as the item while it is read (`render`); the old image is then read
//! against it and only its changes are written, as the patch (`diff`). The envelope around them
//! is mostly copied slices of the record. Both paths give byte-identical events: a property test
//! holds this one to the reference's bytes.

use bumpalo::Bump;
use bytes::{BufMut as _, Bytes, BytesMut};
use uuid::Uuid;

use crate::transform::condition::{Attribute, Router, SLOTS, attribute_at};
use crate::transform::diff::{OldValue, Patch};
use crate::transform::number::Decimal;
use crate::transform::render::{Image, Renderer, escape, recycle, write_string};
use crate::transform::wire::{Name, Parser, Text};
use crate::transform::{Event, EventSettings, Routed, eid_for, timestamp};

/// The event for `raw`, or `None` when the record is not one the fast path takes: the caller
/// then asks the reference path, which explains what is wrong with it.
pub(crate) fn build(raw: &str, settings: &EventSettings) -> Option<Event> {
    match BUFFERS.with_borrow_mut(|buffers| build_with(raw, None, &|_| settings, buffers)) {
        Some(Routed::Event(event)) => Some(event),
        _ => None,
    }
}

/// [`build`] for a table with routes: the route decided on the images as they are read, and
/// the event built with its route's `settings`. `None` when the fast path does not take the
/// record, or its images route apart (a move, which the caller makes two records of).
pub(crate) fn build_routed<'s>(
    raw: &str,
    router: &Router,
    settings: impl Fn(usize) -> &'s EventSettings,
) -> Option<Routed> {
    BUFFERS.with_borrow_mut(|buffers| build_with(raw, Some(router), &settings, buffers))
}

/// What a thread reuses from record to record: the item's buffer, the renderer's scratch space
/// and the patch's. Allocating them anew, some kilobytes and twenty vectors per record, was a
/// twentieth of the transform of the benchmark's order (3k of 61k instructions). Nothing larger
/// than [`KEEP`](crate::transform::render::KEEP) is kept, so one large item does not stay
/// allocated.
#[derive(Default)]
struct Buffers {
    item: Vec<u8>,
    renderer: Option<Renderer<'static>>,
    patch: Patch,
    /// The event's JSON before the item.
    head: Vec<u8>,
    events: Events,
}

thread_local! {
    static BUFFERS: std::cell::RefCell<Buffers> = std::cell::RefCell::default();
}

/// One function for both, not one per kind of `settings`: a table with routes runs the same
/// code as one without, besides deciding the route.
fn build_with<'s>(
    raw: &str,
    router: Option<&Router>,
    settings: &dyn Fn(usize) -> &'s EventSettings,
    buffers: &mut Buffers,
) -> Option<Routed> {
    // Offsets are u32; a record is at most some 400 KB.
    u32::try_from(raw.len()).ok()?;
    // Escaped strings, rare, are decoded into this; an arena allocates nothing until used.
    let arena = Bump::new();
    let mut p = Parser::new(raw, &arena, 0, 0);
    // Sized for the record, so that no buffer grows while it is read: the item is smaller than
    // its image on the wire.
    let mut item = recycle(std::mem::take(&mut buffers.item));
    item.reserve(raw.len());
    // Every field named: `..Record::default()` built a renderer, a patch and an image only to
    // drop them.
    let mut record = Record {
        event_id: None,
        event_name: None,
        created: None,
        sequence_number: None,
        r: buffers.renderer.take().unwrap_or_default(),
        new: Written {
            json: item,
            image: None,
            read: false,
        },
        old: Written::default(),
        old_at: None,
        old_present: false,
        dynamodb_read: false,
        patch: std::mem::take(&mut buffers.patch).recycle(raw.len()),
    };
    p.members(|p, name, _| record.member(p, name))?;
    p.whitespace();
    if p.at != raw.len() {
        return None;
    }
    let Record {
        event_id,
        event_name,
        created,
        sequence_number,
        mut r,
        new,
        old,
        old_at,
        old_present,
        mut patch,
        ..
    } = record;
    let ((event_id, eid), sequence_number) = (event_id?, sequence_number?);
    // Anything but a decimal number is malformed: the reference says so.
    let zeros = super::sequence_number_padding(sequence_number)?;
    if let (Some(image), Some(_), Some(at)) = (&new.image, &old.image, old_at) {
        // The old image came first and was written on its own: now it is read again, against
        // the new one.
        let mut p = Parser::new(raw, &arena, at, 2);
        patch.old_against_new(&mut p, &mut r, image, &new.json)?;
    } else if let (Some(image), false) = (&new.image, old_present) {
        patch.add_all(image, &new.json);
    }
    let (data_op, item) = match event_name?.as_bytes() {
        b"INSERT" => (b'C', &new),
        b"MODIFY" if old_present => (b'U', &new),
        // A REMOVE never has a new image; with one, the reference takes it.
        b"REMOVE" if new.image.is_none() => {
            patch.remove_all(old.image.as_ref()?);
            (b'D', &old)
        }
        _ => return None,
    };
    let item_image = item.image.as_ref()?;
    let created_at_ms = created?.millis()?;
    let route = match router {
        None => 0,
        Some(router) => match route(router, raw, &arena, (&new, &old, old_present), &patch)? {
            Some(route) => route,
            None => {
                give_back(buffers, r, patch, new, old);
                return Some(Routed::Unrouted {
                    sequence_number: sequence_number.to_owned(),
                });
            }
        },
    };
    let settings = settings(route);

    let out = &mut buffers.head;
    out.clear();
    out.extend_from_slice(br#"{"metadata":{"eid":""#);
    out.extend_from_slice(
        eid.hyphenated()
            .encode_lower(&mut uuid::Uuid::encode_buffer())
            .as_bytes(),
    );
    out.extend_from_slice(br#"","occurred_at":""#);
    timestamp::write(created_at_ms, out)?;
    out.push(b'"');
    if let Some(names) = &settings.compaction_key {
        out.extend_from_slice(br#","partition_compaction_key":"#);
        compaction_key(out, item_image, &item.json, names)?;
    }
    out.extend_from_slice(br#"},"data_op":""#);
    out.push(data_op);
    out.extend_from_slice(br#"","data_type":"#);
    write_string(out, &settings.data_type);
    out.extend_from_slice(br#","data":{"item":"#);
    let ops = patch.ops();
    const PATCH: &[u8] = br#","patch":["#;
    const SEQUENCE: &[u8] = br#"],"sequence_number":""#;
    const END: &[u8] = br#""}}"#;
    // The item's text has the same length in wire order as in name order.
    let body_len = out.len()
        + item.json.len()
        + PATCH.len()
        + ops.len()
        + SEQUENCE.len()
        + zeros
        + sequence_number.len()
        + END.len();
    let len = body_len + event_id.len() + sequence_number.len();
    let data = buffers.events.event(len, |data| {
        data.put_slice(out);
        item_image.write_object(&item.json, data);
        data.put_slice(PATCH);
        data.put_slice(ops);
        data.put_slice(SEQUENCE);
        data.put_bytes(b'0', zeros);
        data.put_slice(sequence_number.as_bytes());
        data.put_slice(END);
        data.put_slice(event_id.as_bytes());
        data.put_slice(sequence_number.as_bytes());
    });

    give_back(buffers, r, patch, new, old);
    let mut event = Event::from_parts(eid, data, body_len, event_id.len(), created_at_ms);
    event.route = route;
    Some(Routed::Event(event))
}

/// What a record's build reuses, kept for the next record.
fn give_back<'a>(
    buffers: &mut Buffers,
    mut r: Renderer<'a>,
    patch: Patch,
    new: Written<'a>,
    old: Written<'a>,
) {
    if let Some(image) = new.image {
        r.give_back(image);
    }
    if let Some(image) = old.image {
        r.give_back(image);
    }
    buffers.renderer = Some(r.recycle());
    buffers.patch = patch;
    buffers.item = recycle(new.json);
}

/// The route that takes the record read into `new`, `old` and `patch`: `Some(None)` when none
/// does, `None` when its images route apart or the routes test more attributes than it looks
/// up on the stack. Each image present is routed, as [`crate::route::Routes::apply`] routes the
/// record's text otherwise. An old image read against the new one is read through the patch:
/// an attribute the diff found the same is the new one's, already read.
fn route<'a>(
    router: &Router,
    raw: &'a str,
    arena: &'a Bump,
    (new, old, old_present): (&Written<'_>, &Written<'_>, bool),
    patch: &Patch,
) -> Option<Option<usize>> {
    let n = router.names().len();
    if n > SLOTS {
        return None;
    }
    // Per name: its member in the new image, and its value in each image.
    let mut at_new = [None; SLOTS];
    let (mut in_new, mut in_old) = ([None; SLOTS], [None; SLOTS]);
    let read = |image: &Image<'_>,
                found: &mut [Option<Attribute<'a>>],
                at: &mut [Option<usize>]| {
        for ((name, found), at) in router.names().zip(found).zip(at) {
            *at = image.scan(&name);
            *found = at.and_then(|i| attribute_at(raw, arena, image.members[i].value_at as usize));
        }
    };
    let to = new.image.as_ref().map(|image| {
        read(image, &mut in_new, &mut at_new);
        router.route_found(&in_new[..n])
    });
    let from = match (&old.image, &new.image) {
        (Some(image), _) => {
            read(image, &mut in_old, &mut [None; SLOTS]);
            Some(router.route_found(&in_old[..n]))
        }
        (None, Some(_)) if old_present => {
            let mut same = true;
            for (k, name) in router.names().enumerate() {
                let value_at = match at_new[k].map(|i| patch.old_value(i)) {
                    Some(OldValue::Same) => {
                        in_old[k] = in_new[k];
                        continue;
                    }
                    Some(OldValue::At(at)) => Some(at),
                    Some(OldValue::Missing) => None,
                    None => patch.gone_value_at(&name, raw, arena),
                };
                same &= at_new[k].is_none() && value_at.is_none();
                in_old[k] = value_at.and_then(|at| attribute_at(raw, arena, at));
            }
            // Every attribute the routes test is as it was: so is the route.
            Some(if same {
                to?
            } else {
                router.route_found(&in_old[..n])
            })
        }
        _ => None,
    };
    match (to, from) {
        (Some(to), Some(from)) => (to == from).then_some(to),
        (Some(only), None) | (None, Some(only)) => Some(only),
        (None, None) => None,
    }
}

/// Where a thread writes its events, each its body, eventID and sequence number: slices of
/// shared chunks, so that an event is not an allocation of its own. Allocating and freeing each
/// event's body, 1.7 KB for the benchmark's order (above the allocator's per-thread cache), was a
/// twentieth of the relay's CPU. A chunk is freed when its last event is (once published), which
/// is some tens of events later.
#[derive(Default)]
struct Events(BytesMut);

impl Events {
    const CHUNK: usize = 64 << 10;

    /// An event of `len` bytes, as `write` writes it.
    fn event(&mut self, len: usize, write: impl FnOnce(&mut BytesMut)) -> Bytes {
        // A chunk whose events have all been dropped (published) is taken again, not freed.
        if self.0.capacity() < len && !self.0.try_reclaim(len) {
            self.0 = BytesMut::with_capacity(len.max(Self::CHUNK));
        }
        write(&mut self.0);
        debug_assert_eq!(self.0.len(), len, "the event's length as counted");
        self.0.split().freeze()
    }
}

/// One image as read: written as JSON, with its members.
#[derive(Default)]
struct Written<'a> {
    json: Vec<u8>,
    image: Option<Image<'a>>,
    /// The record has this image's member (perhaps `null`).
    read: bool,
}

/// What the event is made of, as far as the record has been read; the rest of it is checked
/// and skipped.
struct Record<'a> {
    /// The eventID and its eid, hashed as soon as it is read: SHA-1 is a chain of dependent
    /// instructions, which the processor works through while it reads the rest of the record.
    /// Hashed at the end, the event's head would wait for it.
    event_id: Option<(&'a str, Uuid)>,
    event_name: Option<Text<'a>>,
    /// `ApproximateCreationDateTime`.
    created: Option<Decimal<'a>>,
    sequence_number: Option<&'a str>,
    r: Renderer<'a>,
    new: Written<'a>,
    /// The old image, written only when it comes before the new one (or there is none): then
    /// it is the item of a REMOVE, or is read again against the new image at `old_at`.
    old: Written<'a>,
    old_at: Option<usize>,
    /// The record has an old image that is not `null`.
    old_present: bool,
    dynamodb_read: bool,
    patch: Patch,
}

impl<'a> Record<'a> {
    fn member(&mut self, p: &mut Parser<'a>, name: Text<'a>) -> Option<()> {
        // A repeated member overwrites the earlier one, as it does in the reference's `Value`.
        match name.as_bytes() {
            b"eventID" => {
                let id = p.str()?;
                self.event_id = Some((id, eid_for(id)));
            }
            b"eventName" => self.event_name = Some(p.string()?),
            // A second one is left to the reference, which takes the last.
            b"dynamodb" if std::mem::replace(&mut self.dynamodb_read, true) => return None,
            b"dynamodb" => p.members(|p, name, _| self.stream_record(p, name))?,
            _ => p.skip()?,
        }
        Some(())
    }

    fn stream_record(&mut self, p: &mut Parser<'a>, name: Text<'a>) -> Option<()> {
        match name.as_bytes() {
            b"ApproximateCreationDateTime" => self.created = Some(p.number()?),
            b"SequenceNumber" => self.sequence_number = Some(p.str()?),
            // A second image would leave the patch made against the wrong one.
            b"NewImage" | b"OldImage" if self.image_read(name.as_bytes()) => return None,
            b"NewImage" => {
                self.new.read = true;
                self.new.image = self.r.image(p, &mut self.new.json)?;
            }
            b"OldImage" => {
                self.old.read = true;
                p.whitespace();
                let at = p.at;
                if p.null()? {
                    return Some(());
                }
                self.old_present = true;
                match &self.new.image {
                    Some(new) => {
                        self.patch
                            .old_against_new(p, &mut self.r, new, &self.new.json)?;
                    }
                    None => {
                        self.old.image = self.r.image(p, &mut self.old.json)?;
                        self.old_at = Some(at);
                    }
                }
            }
            _ => p.skip()?,
        }
        Some(())
    }

    fn image_read(&self, name: &[u8]) -> bool {
        match name {
            b"NewImage" => self.new.read,
            _ => self.old.read,
        }
    }
}

/// One key attribute: its value as a string (S as is, N its digits, B its base64). Several: the
/// JSON array text of their values, `["order-42",17]`, which no other pair of values produces,
/// whatever characters the values hold.
fn compaction_key(
    out: &mut Vec<u8>,
    item: &Image<'_>,
    json: &[u8],
    names: &[String],
) -> Option<()> {
    let key_value = |name: &String| {
        let member = &item.members[item.find(&Name::new(Text::Plain(name.as_bytes())))?];
        let value = member.json(json);
        // Strings (S, B) and numbers only.
        (value[0] == b'"' || value[0] == b'-' || value[0].is_ascii_digit()).then_some(value)
    };
    match names {
        [] => None,
        [name] => {
            let value = key_value(name)?;
            if value[0] == b'"' {
                out.extend_from_slice(value);
            } else {
                out.push(b'"');
                out.extend_from_slice(value);
                out.push(b'"');
            }
            Some(())
        }
        names => {
            let mut array = vec![b'['];
            for (i, name) in names.iter().enumerate() {
                if i > 0 {
                    array.push(b',');
                }
                array.extend_from_slice(key_value(name)?);
            }
            array.push(b']');
            out.push(b'"');
            escape(out, &array, false);
            out.push(b'"');
            Some(())
        }
    }
}
