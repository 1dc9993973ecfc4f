//! DynamoDB numbers as the decimal text they travel in: the JSON grammar check, serde_json's
//! spelling, ordering by value, and epoch seconds to milliseconds.
//!
//! Everything here works on the digits, never on a float: DynamoDB numbers carry up to 38
//! significant digits and exponents from -130 to +125, far beyond an f64. A bignum crate would
//! also do, but sorting a number set and reading a timestamp only need "which is larger" and
//! "round to milliseconds", and both are a few lines on the digits without allocating.

use std::borrow::Cow;
use std::cmp::Ordering;

/// Exponents beyond this are clamped. Far past anything DynamoDB stores, yet small enough that
/// adding digit counts to it cannot overflow an `i64`.
const EXP_CLAMP: i64 = 1 << 40;

/// A number split per RFC 8259: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Decimal<'a> {
    negative: bool,
    int: &'a [u8],
    frac: &'a [u8],
    exp: i64,
    /// The exponent is written as serde_json writes it: `e` and an explicit sign (or absent).
    canonical: bool,
}

impl<'a> Decimal<'a> {
    /// `None` when `text` is not exactly one JSON number (no spaces, no `+`, no `.5`, no `NaN`).
    pub(crate) fn parse(text: &'a str) -> Option<Decimal<'a>> {
        let b = text.as_bytes();
        let mut i = 0;
        let negative = b.first() == Some(&b'-');
        if negative {
            i += 1;
        }
        let int_start = i;
        match b.get(i) {
            Some(b'0') => i += 1,
            Some(b'1'..=b'9') => i += count_digits(&b[i..]),
            _ => return None,
        }
        let int = &b[int_start..i];
        let mut frac: &[u8] = &[];
        if b.get(i) == Some(&b'.') {
            let n = count_digits(&b[i + 1..]);
            if n == 0 {
                return None;
            }
            frac = &b[i + 1..i + 1 + n];
            i += 1 + n;
        }
        let mut exp = 0i64;
        let mut canonical = true;
        if let Some(&marker) = b.get(i) {
            if marker != b'e' && marker != b'E' {
                return None;
            }
            i += 1;
            let exp_negative = match b.get(i) {
                Some(b'-') => {
                    i += 1;
                    true
                }
                Some(b'+') => {
                    i += 1;
                    false
                }
                _ => {
                    canonical = false;
                    false
                }
            };
            canonical &= marker == b'e';
            let n = count_digits(&b[i..]);
            if n == 0 || i + n != b.len() {
                return None;
            }
            for &d in &b[i..i + n] {
                exp = (exp * 10 + i64::from(d - b'0')).min(EXP_CLAMP);
            }
            if exp_negative {
                exp = -exp;
            }
        }
        Some(Decimal {
            negative,
            int,
            frac,
            exp,
            canonical,
        })
    }

    fn significant(&self) -> impl Iterator<Item = u8> + Clone + 'a {
        self.int
            .iter()
            .chain(self.frac)
            .map(|d| d - b'0')
            .skip_while(|&d| d == 0)
    }

    fn is_zero(&self) -> bool {
        self.significant().next().is_none()
    }

    /// The exponent `e` of the value written as `0.d1d2d3… × 10^e` with `d1 ≠ 0`.
    fn scientific_exponent(&self) -> i64 {
        let digits = self.significant().count() as i64;
        digits - self.frac.len() as i64 + self.exp
    }

    /// Orders by value: `-1 < -0.5 < 0 = -0 < 1E-130 < 1 = 1.0 < 1E+125`.
    pub(crate) fn cmp_value(&self, other: &Decimal<'_>) -> Ordering {
        let sign = |d: &Decimal<'_>| {
            if d.is_zero() {
                0
            } else if d.negative {
                -1
            } else {
                1
            }
        };
        let (a, b) = (sign(self), sign(other));
        if a != b || a == 0 {
            return a.cmp(&b);
        }
        let magnitude = self
            .scientific_exponent()
            .cmp(&other.scientific_exponent())
            .then_with(|| cmp_digits(self.significant(), other.significant()));
        if a < 0 {
            magnitude.reverse()
        } else {
            magnitude
        }
    }

    /// The value × 1000, rounded half away from zero to an integer; `None` outside `i64`.
    /// Timestamps come as epoch seconds printed from a double (`1.763794570123E9`), so rounding,
    /// not truncating, undoes float noise such as `…570.12299999`.
    pub(crate) fn millis(&self) -> Option<i64> {
        if self.is_zero() {
            return Some(0);
        }
        let (int, frac) = (self.int, self.frac);
        let scale = self.exp - frac.len() as i64 + 3;
        let value = if scale >= 0 {
            let mut value = accumulate(accumulate(0, int)?, frac)?;
            // A non-zero value gains a digit each step, so this overflows within 19 steps.
            for _ in 0..scale {
                value = value.checked_mul(10)?;
            }
            value
        } else {
            // `keep` digits make the whole milliseconds; the next one rounds.
            let keep = (int.len() + frac.len()) as i64 + scale;
            if keep < 0 {
                return Some(0);
            }
            let keep = keep as usize;
            let (value, next) = match keep.checked_sub(int.len()) {
                None => (accumulate(0, &int[..keep])?, int[keep]),
                Some(k) => (accumulate(accumulate(0, int)?, &frac[..k])?, frac[k]),
            };
            value.checked_add(i64::from(next >= b'5'))?
        };
        Some(if self.negative { -value } else { value })
    }
}

/// `value` followed by the decimal `digits`; `None` outside `i64`.
fn accumulate(mut value: i64, digits: &[u8]) -> Option<i64> {
    for &d in digits {
        value = value.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    Some(value)
}

fn count_digits(b: &[u8]) -> usize {
    b.iter().take_while(|c| c.is_ascii_digit()).count()
}

/// Compares digit strings as fractions `0.d1d2…`: a missing digit counts as 0.
fn cmp_digits(a: impl Iterator<Item = u8>, b: impl Iterator<Item = u8>) -> Ordering {
    let (mut a, mut b) = (a, b);
    loop {
        match (a.next(), b.next()) {
            (None, None) => return Ordering::Equal,
            (Some(x), Some(y)) if x != y => return x.cmp(&y),
            (Some(_), Some(_)) => {}
            (Some(x), None) => return (x != 0 || a.any(|d| d != 0)).cmp(&false),
            (None, Some(y)) => return false.cmp(&(y != 0 || b.any(|d| d != 0))),
        }
    }
}

/// `text` in serde_json's spelling when it is a JSON number, else `None`.
///
/// With `arbitrary_precision` serde_json keeps a number's digits but writes its exponent as `e`
/// with an explicit sign (`1E125` → `1e+125`). Events use that spelling on both paths, so an
/// event's numbers are what any serde_json consumer reads and writes back, and `1E125` in the old
/// image and `1e+125` in the new one are not a change.
pub(crate) fn canonical(text: &str) -> Option<Cow<'_, str>> {
    if is_plain_decimal(text.as_bytes()) {
        return Some(Cow::Borrowed(text));
    }
    let decimal = Decimal::parse(text)?;
    if decimal.canonical {
        return Some(Cow::Borrowed(text));
    }
    let mantissa_end = text.find(['e', 'E']).unwrap_or(text.len());
    let mut out = String::with_capacity(text.len() + 1);
    out.push_str(&text[..mantissa_end]);
    out.push('e');
    let exponent = &text[mantissa_end + 1..];
    if !exponent.starts_with(['+', '-']) {
        out.push('+');
    }
    out.push_str(exponent);
    Some(Cow::Owned(out))
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?`: most numbers of items, checked in one pass over them: the
/// digits before the dot, then the ones after it, each run a loop without other branches.
#[inline]
pub(crate) fn is_plain_decimal(b: &[u8]) -> bool {
    let digits = b.strip_prefix(b"-").unwrap_or(b);
    let int = count_digits(digits);
    // Digits before the dot, without a leading zero, and after it if there is one.
    let whole = int > 0 && (digits[0] != b'0' || int == 1);
    match &digits[int..] {
        [] => whole,
        [b'.', frac @ ..] => whole && !frac.is_empty() && frac.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// The order of number-set members: by value, equal values by their text, so the order does not
/// depend on the order DynamoDB sent them in. Both must have passed [`Decimal::parse`].
pub(crate) fn cmp_members(a: &str, b: &str) -> Ordering {
    match (Decimal::parse(a), Decimal::parse(b)) {
        (Some(x), Some(y)) => x.cmp_value(&y).then_with(|| a.cmp(b)),
        _ => a.cmp(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grammar() {
        for ok in [
            "0",
            "-0",
            "1",
            "-1",
            "10",
            "1.5",
            "0.000",
            "1e5",
            "1E5",
            "1e+5",
            "1E-130",
            "-1.25e-7",
            "12345678901234567890123456789012345678",
            "9.9999999999999999999999999999999999999E+125",
        ] {
            assert!(Decimal::parse(ok).is_some(), "{ok}");
        }
        for bad in [
            "", "-", "+1", "01", "00", ".5", "1.", "1.e5", "1e", "1e+", "--1", "1 ", " 1", "NaN",
            "Infinity", "0x10", "1,5", "1.5.5", "1e5.5", "١",
        ] {
            assert!(Decimal::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn canonical_spelling_is_serde_jsons() {
        for (text, want) in [
            ("1.50", "1.50"),
            ("1E+125", "1e+125"),
            ("1E125", "1e+125"),
            ("1e-130", "1e-130"),
            ("-2.5E7", "-2.5e+7"),
            ("-0", "-0"),
        ] {
            assert_eq!(canonical(text).unwrap(), want);
            let via_serde: serde_json::Number = serde_json::from_str(text).unwrap();
            assert_eq!(via_serde.to_string(), want, "serde_json spells {text} so");
        }
        assert!(canonical("1.").is_none());
    }

    #[test]
    fn ordering_by_value() {
        let ascending = [
            "-1E+125",
            "-100",
            "-99.5",
            "-1",
            "-0.5",
            "-1E-130",
            "0",
            "1E-130",
            "0.001",
            "0.5",
            "1",
            "1.0000000000000000000000000000000000001",
            "2",
            "10",
            "99.99",
            "1E+2",
            "1E+125",
        ];
        for (i, a) in ascending.iter().enumerate() {
            for (j, b) in ascending.iter().enumerate() {
                let (x, y) = (Decimal::parse(a).unwrap(), Decimal::parse(b).unwrap());
                assert_eq!(x.cmp_value(&y), i.cmp(&j), "{a} vs {b}");
            }
        }
        for (a, b) in [
            ("0", "-0"),
            ("1", "1.000"),
            ("100", "1e2"),
            ("0.1", "1E-1"),
            ("0", "0e5"),
        ] {
            let (x, y) = (Decimal::parse(a).unwrap(), Decimal::parse(b).unwrap());
            assert_eq!(x.cmp_value(&y), Ordering::Equal, "{a} = {b}");
        }
    }

    #[test]
    fn sorting_is_total_and_input_order_free() {
        let mut a = vec!["10", "1e1", "-3", "2", "10.0"];
        let mut b = vec!["10.0", "2", "1e1", "10", "-3"];
        a.sort_by(|x, y| cmp_members(x, y));
        b.sort_by(|x, y| cmp_members(x, y));
        assert_eq!(a, ["-3", "2", "10", "10.0", "1e1"]);
        assert_eq!(a, b);
    }

    #[test]
    fn millis() {
        for (text, want) in [
            ("1.763794570123E9", Some(1_763_794_570_123)),
            ("1763794570.123", Some(1_763_794_570_123)),
            ("1763794570", Some(1_763_794_570_000)),
            ("1763794570.1229999", Some(1_763_794_570_123)),
            ("1763794570.1234", Some(1_763_794_570_123)),
            ("1763794570.1235", Some(1_763_794_570_124)),
            ("1.7637945701235e+9", Some(1_763_794_570_124)),
            ("-1.5", Some(-1500)),
            ("-0.0005", Some(-1)),
            ("0.0004", Some(0)),
            ("0e999999999999999999999", Some(0)),
            ("1e-999999999999999999999", Some(0)),
            ("5e-10", Some(0)),
            ("5e-4", Some(1)),
            ("1e15", Some(1_000_000_000_000_000_000)),
            ("1e16", None),
            ("9223372036854775.807", Some(i64::MAX)),
            ("9223372036854775.808", None),
        ] {
            assert_eq!(Decimal::parse(text).unwrap().millis(), want, "{text}");
        }
    }

    /// The value as a fixed-point digit string, exact for the exponents the strategy makes: an
    /// obviously right oracle for `cmp_value`.
    fn fixed_point(text: &str) -> (i8, String) {
        let d = Decimal::parse(text).unwrap();
        if d.is_zero() {
            return (0, String::new());
        }
        let digits: String = d.int.iter().chain(d.frac).map(|&c| c as char).collect();
        let point = d.int.len() as i64 + d.exp; // position of the decimal point in `digits`
        let mut fixed = vec![b'0'; 400];
        for (k, c) in digits.bytes().enumerate() {
            fixed[(200 - point + k as i64) as usize] = c;
        }
        (
            if d.negative { -1 } else { 1 },
            String::from_utf8(fixed).unwrap(),
        )
    }

    fn number_text() -> impl Strategy<Value = String> {
        (
            any::<bool>(),
            "(0|[1-9][0-9]{0,19})",
            proptest::option::of("[0-9]{1,19}"),
            proptest::option::of((
                -60i32..60,
                prop::sample::select(vec!["e", "E"]),
                prop::sample::select(vec!["", "+"]),
            )),
        )
            .prop_map(|(neg, int, frac, exp)| {
                let mut s = String::new();
                if neg {
                    s.push('-');
                }
                s.push_str(&int);
                if let Some(f) = frac {
                    s.push('.');
                    s.push_str(&f);
                }
                if let Some((e, marker, plus)) = exp {
                    s.push_str(marker);
                    if e >= 0 {
                        s.push_str(plus);
                    }
                    s.push_str(&e.to_string());
                }
                s
            })
    }

    proptest! {
        #[test]
        fn cmp_value_matches_fixed_point(a in number_text(), b in number_text()) {
            let (sa, fa) = fixed_point(&a);
            let (sb, fb) = fixed_point(&b);
            let want = sa.cmp(&sb).then_with(|| match sa {
                1 => fa.cmp(&fb),
                -1 => fb.cmp(&fa),
                _ => Ordering::Equal,
            });
            prop_assert_eq!(Decimal::parse(&a).unwrap().cmp_value(&Decimal::parse(&b).unwrap()), want);
        }

        #[test]
        fn grammar_matches_serde_json(s in "[-+0-9.eE ]{1,8}") {
            let serde_accepts = serde_json::from_str::<serde_json::Number>(&s).is_ok() && s.trim() == s;
            prop_assert_eq!(Decimal::parse(&s).is_some(), serde_accepts);
            prop_assert_eq!(canonical(&s).is_some(), serde_accepts);
            if let Some(c) = canonical(&s) {
                prop_assert_eq!(c.as_ref(), serde_json::from_str::<serde_json::Number>(&s).unwrap().to_string());
            }
        }

        /// The plain decimals taken as they are are numbers that serde_json spells the same.
        #[test]
        fn plain_decimals_are_canonical(s in "-?[0-9]{0,4}[.]?[0-9]{0,3}[.-]?") {
            let number = serde_json::from_str::<serde_json::Number>(&s).ok();
            let plain = number.is_some_and(|n| n.to_string() == s) && !s.contains(['e', 'E']);
            prop_assert_eq!(is_plain_decimal(s.as_bytes()), plain, "{}", s);
        }

        #[test]
        fn millis_round_trips(ms in -62_167_219_200_000i64..253_402_300_800_000) {
            let (sign, abs) = if ms < 0 { ("-", ms.unsigned_abs()) } else { ("", ms as u64) };
            for text in [
                format!("{sign}{}.{:03}", abs / 1000, abs % 1000),
                format!("{sign}{abs}e-3"),
                format!("{sign}{abs}0E-4"),
            ] {
                prop_assert_eq!(Decimal::parse(&text).unwrap().millis(), Some(ms), "{}", text);
            }
        }
    }
}
