//! `occurred_at`: milliseconds since the epoch as RFC 3339 in UTC, always with three fraction
//! digits (`2026-11-22T06:16:10.123Z`).

use time::OffsetDateTime;
use time::macros::format_description;

/// `0000-01-01T00:00:00.000Z`: RFC 3339 has four-digit years only.
const MIN_MS: i64 = -62_167_219_200_000;
/// `9999-12-31T23:59:59.999Z`.
const MAX_MS: i64 = 253_402_300_799_999;

const MS_PER_DAY: i64 = 86_400_000;

/// The fast path's formatter: the `time` crate interprets a format description at run time, a
/// noticeable share of the budget of one event; this is a few divisions, and two digits at a
/// time from a table. Checked against [`reference`] by a property test. `None` outside years
/// 0000 to 9999.
pub(crate) fn write(ms: i64, out: &mut Vec<u8>) -> Option<()> {
    if !(MIN_MS..=MAX_MS).contains(&ms) {
        return None;
    }
    let (year, month, day) = civil_from_days(ms.div_euclid(MS_PER_DAY));
    // In range, all of these fit a u32 and are not negative.
    let (year, in_day) = (year as u32, ms.rem_euclid(MS_PER_DAY) as u32);
    let (seconds, milli) = (in_day / 1000, in_day % 1000);
    let mut text = *b"0000-00-00T00:00:00.000Z";
    for (at, n) in [
        (0, year / 100),
        (2, year % 100),
        (5, month as u32),
        (8, day as u32),
        (11, seconds / 3600),
        (14, seconds / 60 % 60),
        (17, seconds % 60),
        (21, milli % 100),
    ] {
        text[at..at + 2].copy_from_slice(&PAIRS[n as usize]);
    }
    text[20] = b'0' + (milli / 100) as u8;
    out.extend_from_slice(&text);
    Some(())
}

/// `00` to `99`.
const PAIRS: [[u8; 2]; 100] = {
    let mut pairs = [[0u8; 2]; 100];
    let mut n = 0;
    while n < 100 {
        pairs[n] = [b'0' + (n / 10) as u8, b'0' + (n % 10) as u8];
        n += 1;
    }
    pairs
};

/// Year, month, day of a day count since 1970-01-01 in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153; // March = 0
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The reference path's formatter, through the `time` crate.
pub(crate) fn reference(ms: i64) -> Option<String> {
    if !(MIN_MS..=MAX_MS).contains(&ms) {
        return None;
    }
    let at = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    at.format(format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fast(ms: i64) -> Option<String> {
        let mut out = Vec::new();
        write(ms, &mut out).map(|()| String::from_utf8(out).unwrap())
    }

    #[test]
    fn examples() {
        for (ms, want) in [
            (1_763_794_570_123, Some("2025-11-22T06:56:10.123Z")),
            (0, Some("1970-01-01T00:00:00.000Z")),
            (-1, Some("1969-12-31T23:59:59.999Z")),
            (951_782_400_000, Some("2000-02-29T00:00:00.000Z")),
            (MIN_MS, Some("0000-01-01T00:00:00.000Z")),
            (MAX_MS, Some("9999-12-31T23:59:59.999Z")),
            (MIN_MS - 1, None),
            (MAX_MS + 1, None),
        ] {
            assert_eq!(fast(ms).as_deref(), want, "{ms}");
            assert_eq!(reference(ms).as_deref(), want, "{ms}");
        }
    }

    proptest! {
        #[test]
        fn fast_matches_the_time_crate(ms in MIN_MS - 1000..MAX_MS + 1000) {
            prop_assert_eq!(fast(ms), reference(ms));
        }
    }
}
