//! The JSON scanners under both readers of the wire: where a string, a value, an array or object
//! ends, found without building anything. [`find_special`] finds the next byte that ends a
//! string's plain run, sixteen bytes at a time; [`container_end`] matches brackets 64 bytes at a
//! time. `stream::page` locates a GetRecords page's records with [`skip`], on text not yet
//! checked; the transform steps over values of text already checked with [`value_end`].
//!
//! Each fast loop has its plain reference beside it in the tests, and a property test holding
//! the two to the same answers.

use wide::u8x16;

/// Consumes `byte` if it is at `at`.
pub(crate) fn expect(b: &[u8], at: &mut usize, byte: u8) -> Option<()> {
    (b.get(*at) == Some(&byte)).then(|| *at += 1)
}

/// A string without escapes, as its bytes; `at` is on its opening quote.
pub(crate) fn plain_string<'a>(b: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    expect(b, at, b'"')?;
    let start = *at;
    let end = find_special(b, start);
    (b.get(end)? == &b'"').then(|| {
        *at = end + 1;
        &b[start..end]
    })
}

/// Steps over one JSON value from `at`: a string to its closing quote, an array or object to
/// its matching bracket, anything else to the next `,`, `]` or `}`. Nesting deeper than 128 is
/// refused, as serde_json refuses it; so is a raw control character in a string.
pub(crate) fn skip(b: &[u8], at: &mut usize) -> Option<()> {
    match *b.get(*at)? {
        b'"' => *at = closing_quote(b, *at + 1)? + 1,
        b'{' | b'[' => *at = container_end(b, *at)?,
        _ => {
            while !matches!(b.get(*at)?, b',' | b']' | b'}') {
                *at += 1;
            }
        }
    }
    Some(())
}

/// Where the array or object opened at `at` ends (after its closing bracket).
///
/// Reads 64 bytes at a time: SIMD compares give one bit per byte for quotes, brackets, and
/// backslashes or control characters; the strings are the spans between unescaped quotes (a
/// prefix XOR of the quote bits), and only the brackets outside them are visited one by one.
/// Records are mostly small `{"S":"…"}` objects, so the walk byte by byte it replaced (strings
/// skipped eight bytes at a time) paid per token, where this pays per 64 bytes and per bracket
/// (`cargo bench --bench records`, scan and scan_escaped; figures in docs/performance.md).
///
/// It reads exactly as that walk did: a backslash in a string steps over the next byte, whatever
/// it is, one outside a string is an ordinary byte, and a raw control character in a string
/// before the end refuses the value (serde_json refuses it too), as does nesting deeper than 128.
fn container_end(b: &[u8], at: usize) -> Option<usize> {
    // The open brackets' bytes, innermost last.
    let mut open = [0u8; 128];
    let mut depth = 0;
    // All ones when the block starts inside a string.
    let mut in_string = 0u64;
    let mut pos = at;
    let mut tail;
    loop {
        let block: &[u8; 64] = match b.get(pos..pos + 64) {
            Some(block) => block.try_into().expect("64 bytes"),
            None => {
                // Spaces mean nothing to the scan, in a string or out of one.
                let rest = b.get(pos..).filter(|rest| !rest.is_empty())?;
                tail = [b' '; 64];
                tail[..rest.len()].copy_from_slice(rest);
                &tail
            }
        };
        let classes = classify(block);
        let strings = strings(block, &classes, in_string);
        in_string = 0u64.wrapping_sub(strings.inside >> 63);
        let mut brackets = classes.bracket & !strings.inside & strings.counted;
        while brackets != 0 {
            let i = brackets.trailing_zeros() as usize;
            brackets &= brackets - 1;
            let c = block[i];
            // Bit 1 is set in `{` and `[`, not in `}` and `]`; bit 5 tells `{}` from `[]`.
            if c & 2 != 0 {
                *open.get_mut(depth)? = c;
                depth += 1;
            } else {
                depth -= 1;
                if (open[depth] ^ c) & 0x20 != 0 {
                    return None;
                }
                if depth == 0 {
                    return Some(pos + i + 1);
                }
            }
        }
        if strings.counted != u64::MAX {
            return None;
        }
        pos += strings.step;
    }
}

/// One bit per byte of a block, the lowest for its first byte.
struct Classes {
    quote: u64,
    /// Backslashes and control characters: none in most blocks.
    rare: u64,
    /// `{`, `}`, `[` and `]`.
    bracket: u64,
}

fn classify(block: &[u8; 64]) -> Classes {
    let mut classes = Classes {
        quote: 0,
        rare: 0,
        bracket: 0,
    };
    for (i, chunk) in block.chunks_exact(16).enumerate() {
        let v = u8x16::new(chunk.try_into().expect("16 bytes"));
        let bits = |is: u8x16| u64::from(is.move_mask() as u16) << (16 * i);
        classes.quote |= bits(v.cmp_eq(u8x16::splat(b'"')));
        classes.rare |= bits(v.cmp_eq(u8x16::splat(b'\\')) | is_control(v));
        // `[` and `]` with bit 5 set are `{` and `}`.
        let folded = v | u8x16::splat(0x20);
        classes.bracket |=
            bits(folded.cmp_eq(u8x16::splat(b'{')) | folded.cmp_eq(u8x16::splat(b'}')));
    }
    classes
}

#[inline(always)]
fn is_control(v: u8x16) -> u8x16 {
    v.min(u8x16::splat(0x1f)).cmp_eq(v)
}

/// Where a block's strings are.
struct Strings {
    /// From each string's opening quote to the byte before its closing quote.
    inside: u64,
    /// The bytes before the first control character in a string: the value ends before it or
    /// is refused.
    counted: u64,
    /// 65 when the block's last byte escapes the next block's first.
    step: usize,
}

/// Most blocks have no backslash and no control character: their strings are where the quotes
/// say, with no byte-by-byte work.
fn strings(block: &[u8; 64], classes: &Classes, in_string: u64) -> Strings {
    if classes.rare == 0 {
        return Strings {
            inside: prefix_xor(classes.quote) ^ in_string,
            counted: u64::MAX,
            step: 64,
        };
    }
    let mut backslash = 0;
    for (i, chunk) in block.chunks_exact(16).enumerate() {
        let v = u8x16::new(chunk.try_into().expect("16 bytes"));
        backslash |= u64::from(v.cmp_eq(u8x16::splat(b'\\')).move_mask() as u16) << (16 * i);
    }
    // simdjson's escape scan: in each run of backslashes, every other one escapes the byte after
    // it, counted from the run's start. As if every backslash were in a string.
    const ODD: u64 = 0xAAAA_AAAA_AAAA_AAAA;
    let code = ((backslash << 1 | ODD).wrapping_sub(backslash)) ^ ODD;
    let escaped = code ^ backslash;
    let inside = prefix_xor(classes.quote & !escaped) ^ in_string;
    // Exact as long as no backslash is outside a string, where the walk took it as ordinary.
    if backslash & !inside != 0 {
        return strings_in_order(block, classes, in_string);
    }
    let control = classes.rare & !backslash & inside & !escaped;
    Strings {
        inside,
        counted: (control & control.wrapping_neg()).wrapping_sub(1),
        step: 64 + ((code & backslash) >> 63) as usize,
    }
}

/// A block with a backslash outside any string, which is no JSON: read quote by quote, as the
/// backslash is an ordinary byte there.
fn strings_in_order(block: &[u8; 64], classes: &Classes, in_string: u64) -> Strings {
    let (mut quotes, mut inside) = (0u64, in_string != 0);
    let mut strings = Strings {
        inside: 0,
        counted: u64::MAX,
        step: 64,
    };
    let mut events = classes.quote | classes.rare;
    while events != 0 {
        let i = events.trailing_zeros();
        let bit = 1u64 << i;
        events &= events - 1;
        if classes.quote & bit != 0 {
            inside = !inside;
            quotes |= bit;
        } else if inside {
            if block[i as usize] != b'\\' {
                strings.counted = bit - 1;
                break;
            }
            if i == 63 {
                strings.step = 65;
            } else {
                events &= !(bit << 1);
            }
        }
    }
    strings.inside = prefix_xor(quotes) ^ in_string;
    strings
}

/// Each bit the XOR of itself and all bits below it: ones from an opening quote on, until the
/// closing one.
fn prefix_xor(mut x: u64) -> u64 {
    for shift in [1, 2, 4, 8, 16, 32] {
        x ^= x << shift;
    }
    x
}

/// The closing quote of the string whose content starts at `at`; `None` at a raw control
/// character or the end of `b`. Unlike [`string_end`], for text not yet checked.
fn closing_quote(b: &[u8], mut at: usize) -> Option<usize> {
    loop {
        at = find_special(b, at);
        match b.get(at)? {
            b'"' => return Some(at),
            // Steps over the escaped byte; the hex digits of `\u` are ordinary bytes.
            b'\\' => at += 2,
            _ => return None,
        }
    }
}

/// Where the next `"`, `\` or control character is, from `at` (the string's end, an escape, or an
/// error), or `bytes.len()`. Sixteen bytes at a time (SSE2 through `wide`, as [`container_end`]
/// does), as it runs over every string of the record and of every GetRecords
/// page: most strings end within one step. Eight bytes at a time with integer bit tricks took
/// two to three steps for most names and values.
#[inline(always)]
pub(crate) fn find_special(bytes: &[u8], mut at: usize) -> usize {
    while let Some(chunk) = bytes.get(at..at + 16) {
        let v = u8x16::new(chunk.try_into().expect("16 bytes"));
        let special = v.cmp_eq(u8x16::splat(b'"')) | v.cmp_eq(u8x16::splat(b'\\')) | is_control(v);
        let mask = special.move_mask();
        if mask != 0 {
            return at + mask.trailing_zeros() as usize;
        }
        at += 16;
    }
    while let Some(&b) = bytes.get(at) {
        if b == b'"' || b == b'\\' || b < 0x20 {
            return at;
        }
        at += 1;
    }
    at.min(bytes.len())
}

/// Where the JSON value starting at `at` ends, in text known to be valid JSON (the event's own
/// JSON, or record text already read and checked): brackets counted, strings stepped over,
/// nothing checked.
pub(crate) fn value_end(bytes: &[u8], mut at: usize) -> usize {
    match bytes.get(at) {
        Some(b'"') => string_end(bytes, at),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            while let Some(&b) = bytes.get(at) {
                match b {
                    b'"' => {
                        at = string_end(bytes, at);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return at + 1;
                        }
                    }
                    _ => {}
                }
                at += 1;
            }
            at
        }
        _ => {
            while let Some(b) = bytes.get(at) {
                if matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                at += 1;
            }
            at
        }
    }
}

/// Where the string whose opening quote is at `quote` ends (after its closing quote), in valid
/// JSON; [`closing_quote`] checks the string on the way.
pub(crate) fn string_end(bytes: &[u8], quote: usize) -> usize {
    let mut at = find_special(bytes, quote + 1);
    while bytes.get(at) == Some(&b'\\') {
        at = find_special(bytes, at + 2);
    }
    at + 1
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_the_first_special_byte() {
        for (s, want) in [
            ("", 0),
            ("abc", 3),
            ("abc\"", 3),
            ("abcdefghij\\k", 10),
            ("abcdefgh\u{1}", 8),
            ("é😀\u{7f}xxxxxxxxxxxxx\"", 20),
            ("\u{1f}", 0),
        ] {
            assert_eq!(find_special(s.as_bytes(), 0), want, "{s:?}");
        }
    }

    /// Any JSON value, as serde_json writes it (no whitespace), sometimes with escapes.
    pub(crate) fn value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            r#"[a-z"\\\[\]{},:\n\u{e9}\u{1F600}]{0,12}"#.prop_map(Value::String),
            // Across the scan's 64-byte blocks, escapes at any place.
            r#"[a-z"\\\n\u{e9}]{40,140}"#.prop_map(Value::String),
        ];
        leaf.prop_recursive(6, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-z\"]{1,6}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// The walk byte by byte that the block scan replaced, for reference: a backslash in a
    /// string steps over the next byte, one outside is an ordinary byte.
    fn walk_end(b: &[u8], mut at: usize) -> Option<usize> {
        let mut open = Vec::new();
        loop {
            let c = *b.get(at)?;
            at += 1;
            match c {
                b'"' => loop {
                    match *b.get(at)? {
                        b'"' => {
                            at += 1;
                            break;
                        }
                        b'\\' => at += 2,
                        0..0x20 => return None,
                        _ => at += 1,
                    }
                },
                b'{' | b'[' if open.len() == 128 => return None,
                b'{' | b'[' => open.push(c),
                b'}' | b']' => {
                    if !matches!((open.pop()?, c), (b'{', b'}') | (b'[', b']')) {
                        return None;
                    }
                    if open.is_empty() {
                        return Some(at);
                    }
                }
                _ => {}
            }
        }
    }

    #[test]
    fn escapes_and_control_characters_at_every_place_in_a_block() {
        // Before the string, a backslash outside any string: the block is read quote by quote.
        for outside in ["", "\\"] {
            for run in 0..6 {
                for pad in 40..140 {
                    for end in ["\"]", "\"\n\"]", "\"]\"\n\"", "\n\"]", "\"\u{e9}]"] {
                        let (pad, run) = ("x".repeat(pad), "\\".repeat(run));
                        let body = format!(r#"[{outside}"{pad}{run}{end}"#);
                        let b = body.as_bytes();
                        assert_eq!(container_end(b, 0), walk_end(b, 0), "{body:?}");
                    }
                }
            }
        }
        // A control character in a string past the value's end is none of its business.
        assert_eq!(container_end(b"{\"a\":1}\"\n\"]", 0), Some(7));
        assert_eq!(container_end(b"{\"a\":\"\n\"}", 0), None);
        // Escaped, it is stepped over; a backslash outside a string is an ordinary byte.
        assert_eq!(container_end(b"{\"a\":\"\\\n\"}", 0), Some(10));
        assert_eq!(container_end(br#"{"a":\}"#, 0), Some(7));
    }

    /// Bytes that mean something to the scan, in any order: mostly not JSON.
    fn soup() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            4 => Just("\""),
            3 => Just("\\"),
            2 => Just("{"),
            2 => Just("}"),
            2 => Just("["),
            2 => Just("]"),
            1 => Just("\n"),
            1 => Just("\u{e9}"),
            4 => Just("a"),
            1 => Just(","),
            1 => Just(":"),
        ];
        let deep = prop::collection::vec(prop_oneof![Just("{"), Just("[")], 120..136);
        (
            prop_oneof![Just("{"), Just("[")],
            0..140usize,
            prop::option::weighted(0.2, deep),
            prop::collection::vec(piece, 0..200),
        )
            .prop_map(|(first, pad, deep, pieces)| {
                let closing: String = deep
                    .iter()
                    .flatten()
                    .rev()
                    .map(|open| if *open == "{" { '}' } else { ']' })
                    .collect();
                format!(
                    r#"{first}"{}"{}{}{closing}"#,
                    "x".repeat(pad),
                    deep.unwrap_or_default().concat(),
                    pieces.concat()
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// The block scan ends a value exactly where the byte walk does, JSON or not.
        #[test]
        fn the_block_scan_agrees_with_the_byte_walk(body in soup()) {
            prop_assert_eq!(container_end(body.as_bytes(), 0), walk_end(body.as_bytes(), 0));
        }
    }

    proptest! {
        #[test]
        fn find_special_matches_a_plain_loop(s in any::<Vec<u8>>(), from in 0usize..4) {
            let want = s.iter().enumerate().skip(from)
                .find(|(_, b)| **b == b'"' || **b == b'\\' || **b < 0x20)
                .map_or(s.len(), |(i, _)| i);
            prop_assert_eq!(find_special(&s, from.min(s.len())), want);
        }

        /// Where serde_json ends a value, with text after it.
        #[test]
        fn value_end_ends_a_value_where_serde_json_does(v in value(), after in "[,}\\] ]") {
            let text = serde_json::to_string(&v).unwrap();
            let with_more = format!("{text}{after}x");
            prop_assert_eq!(value_end(with_more.as_bytes(), 0), text.len());
        }
    }
}
