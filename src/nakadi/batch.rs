//! Requests from events: which events go together, and the bytes that carry them.
//!
//! The body is the events' own serialized bytes joined into a JSON array: never re-serialized,
//! so a re-send is byte for byte what was sent before and what a dead letter holds.

use std::io::Write;

use bytes::{BufMut, Bytes, BytesMut};
use flate2::Compression;
use flate2::write::GzEncoder;

/// Size of the JSON array holding events of these sizes: brackets and the commas between them.
pub(crate) fn array_len(sizes: impl IntoIterator<Item = usize>) -> usize {
    let (count, bytes) = sizes
        .into_iter()
        .fold((0usize, 0usize), |(n, b), s| (n + 1, b + s));
    2 + bytes + count.saturating_sub(1)
}

/// Splits events, given as `(index, size)` in publishing order, into consecutive groups of at
/// most `max_events` events and `max_bytes` bytes of JSON array. An event too large for any
/// group goes alone rather than being dropped: Nakadi decides about it.
pub(crate) fn split(
    events: impl IntoIterator<Item = (usize, usize)>,
    max_events: usize,
    max_bytes: usize,
) -> Vec<Vec<usize>> {
    let max_events = max_events.max(1);
    let mut groups = Vec::new();
    let mut group: Vec<usize> = Vec::new();
    let mut group_bytes = 2; // the brackets
    for (index, size) in events {
        let added = size + usize::from(!group.is_empty());
        if !group.is_empty() && (group.len() >= max_events || group_bytes + added > max_bytes) {
            groups.push(std::mem::take(&mut group));
            group_bytes = 2;
        }
        group_bytes += size + usize::from(!group.is_empty());
        group.push(index);
    }
    if !group.is_empty() {
        groups.push(group);
    }
    groups
}

/// The JSON array of these serialized events.
pub(crate) fn json_array<'a>(bodies: impl IntoIterator<Item = &'a [u8]> + Clone) -> Bytes {
    let len = array_len(bodies.clone().into_iter().map(<[u8]>::len));
    let mut out = BytesMut::with_capacity(len);
    out.put_u8(b'[');
    for (i, body) in bodies.into_iter().enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(body);
    }
    out.put_u8(b']');
    out.freeze()
}

/// What goes over the wire for these serialized events: their JSON array, gzipped when it is at
/// least `gzip_min_bytes`. Returns the bytes and whether they are gzipped.
pub(crate) fn body<'a>(
    bodies: impl IntoIterator<Item = &'a [u8]> + Clone,
    gzip_min_bytes: usize,
) -> (Bytes, bool) {
    let len = array_len(bodies.clone().into_iter().map(<[u8]>::len));
    if len < gzip_min_bytes {
        return (json_array(bodies), false);
    }
    // The fast level: event JSON shrinks several times over even so, and compression runs on the
    // async worker thread, where a slower level would stall the other shards. The events go to
    // the compressor one by one: joining a batch (some hundred kilobytes) into an array first
    // only to compress it costs about as much CPU as the compression itself.
    let mut gz = GzEncoder::new(Vec::with_capacity(len / 4 + 64), Compression::fast());
    let mut write = |part: &[u8]| gz.write_all(part).expect("writing to a Vec cannot fail");
    write(b"[");
    for (i, body) in bodies.into_iter().enumerate() {
        if i > 0 {
            write(b",");
        }
        write(body);
    }
    write(b"]");
    let zipped = gz.finish().expect("writing to a Vec cannot fail");
    (Bytes::from(zipped), true)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use flate2::read::GzDecoder;

    use super::*;

    fn sizes(list: &[usize]) -> Vec<(usize, usize)> {
        list.iter().copied().enumerate().collect()
    }

    #[test]
    fn array_len_counts_brackets_and_commas() {
        assert_eq!(array_len([]), 2);
        assert_eq!(array_len([5]), 7);
        assert_eq!(array_len([5, 5, 5]), 19);
    }

    #[test]
    fn split_by_count() {
        assert_eq!(
            split(sizes(&[1; 5]), 2, usize::MAX),
            vec![vec![0, 1], vec![2, 3], vec![4]]
        );
        assert_eq!(split(sizes(&[1; 3]), 10, usize::MAX), vec![vec![0, 1, 2]]);
        assert_eq!(
            split(sizes(&[1; 2]), 0, usize::MAX),
            vec![vec![0], vec![1]],
            "zero means one"
        );
        assert!(split(sizes(&[]), 10, 10).is_empty());
    }

    #[test]
    fn split_by_bytes_counts_the_array_exactly() {
        // Two events of 10 make an array of 23 bytes: it fits 23, not 22.
        assert_eq!(split(sizes(&[10, 10]), 100, 23), vec![vec![0, 1]]);
        assert_eq!(split(sizes(&[10, 10]), 100, 22), vec![vec![0], vec![1]]);
        assert_eq!(
            split(sizes(&[10, 10, 10, 10]), 100, 34),
            vec![vec![0, 1, 2], vec![3]]
        );
    }

    #[test]
    fn oversized_event_goes_alone_in_order() {
        assert_eq!(
            split(sizes(&[5, 500, 5, 5]), 100, 50),
            vec![vec![0], vec![1], vec![2, 3]]
        );
        assert_eq!(split(sizes(&[500]), 100, 50), vec![vec![0]]);
    }

    #[test]
    fn split_keeps_given_indices() {
        assert_eq!(
            split([(3, 1), (7, 1), (9, 1)], 2, usize::MAX),
            vec![vec![3, 7], vec![9]]
        );
    }

    #[test]
    fn every_group_respects_both_limits() {
        let sizes: Vec<usize> = (0..200).map(|i| (i * 37) % 101 + 1).collect();
        for (max_events, max_bytes) in [(1, 1000), (7, 120), (50, 400), (1000, 103)] {
            let groups = split(sizes.iter().copied().enumerate(), max_events, max_bytes);
            let flat: Vec<usize> = groups.iter().flatten().copied().collect();
            assert_eq!(flat, (0..200).collect::<Vec<_>>(), "order and completeness");
            for g in &groups {
                assert!(g.len() <= max_events);
                let bytes = array_len(g.iter().map(|&i| sizes[i]));
                assert!(g.len() == 1 || bytes <= max_bytes, "{g:?}: {bytes}");
            }
        }
    }

    #[test]
    fn json_array_joins_bodies_verbatim() {
        let a = Bytes::from_static(br#"{"a":1.50}"#);
        let b = Bytes::from_static(br#"{"b":"x"}"#);
        let json = json_array([&a[..], &b[..]]);
        assert_eq!(&json[..], br#"[{"a":1.50},{"b":"x"}]"#);
        assert_eq!(json.len(), array_len([a.len(), b.len()]));
        assert_eq!(&json_array([&a[..]])[..], br#"[{"a":1.50}]"#);
    }

    #[test]
    fn gzip_from_the_threshold_on() {
        let events: Vec<String> = (0..100).map(|i| format!(r#"{{"k":"v{i}"}}"#)).collect();
        let events: Vec<&[u8]> = events.iter().map(|e| e.as_bytes()).collect();
        let json = json_array(events.iter().copied());
        let (same, zipped) = body(events.iter().copied(), json.len() + 1);
        assert!(!zipped);
        assert_eq!(same, json);

        let (gz, zipped) = body(events.iter().copied(), json.len());
        assert!(zipped);
        assert!(gz.len() < json.len());
        let mut back = Vec::new();
        GzDecoder::new(&gz[..]).read_to_end(&mut back).unwrap();
        assert_eq!(back, json, "the same array, compressed");

        let (_, zipped) = body(events[..1].iter().copied(), 0);
        assert!(zipped, "0 means always");
    }
}
