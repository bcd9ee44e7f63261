//! The few formats doctor reads by hand: an X.509 certificate's validity period (a short
//! walk over its DER encoding, no full parser) and the HTTP `Date` header.

use time::{Date, Month, OffsetDateTime};

/// One DER element: (tag, contents, what follows it).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const VERSION: u8 = 0xa0;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;

/// `notBefore` and `notAfter` of a DER certificate, as Unix seconds.
pub fn validity(cert: &[u8]) -> Option<(i64, i64)> {
    let (tag, cert, _) = tlv(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = tlv(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    let (mut tag, _, mut after) = tlv(rest)?;
    if tag == VERSION {
        rest = after;
        (tag, _, after) = tlv(rest)?;
    }
    if tag != INTEGER {
        return None; // serial number
    }
    rest = after;
    for _ in 0..2 {
        // signature algorithm, issuer
        let (tag, _, after) = tlv(rest)?;
        if tag != SEQUENCE {
            return None;
        }
        rest = after;
    }
    let (tag, validity, _) = tlv(rest)?;
    if tag != SEQUENCE {
        return None;
    }
    let (t1, not_before, rest) = tlv(validity)?;
    let (t2, not_after, _) = tlv(rest)?;
    Some((asn1_time(t1, not_before)?, asn1_time(t2, not_after)?))
}

fn num(s: &str, range: std::ops::Range<usize>) -> Option<u32> {
    let part = s.get(range)?;
    if !part.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    part.parse().ok()
}

fn unix(year: i32, month: u32, day: u32, h: u32, m: u32, s: u32) -> Option<i64> {
    let month = Month::try_from(u8::try_from(month).ok()?).ok()?;
    let date = Date::from_calendar_date(year, month, u8::try_from(day).ok()?).ok()?;
    let t = date
        .with_hms(
            u8::try_from(h).ok()?,
            u8::try_from(m).ok()?,
            u8::try_from(s).ok()?,
        )
        .ok()?;
    Some(t.assume_utc().unix_timestamp())
}

/// UTCTime `YYMMDDHHMMSSZ` or GeneralizedTime `YYYYMMDDHHMMSS[.f]Z`.
fn asn1_time(tag: u8, bytes: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(bytes).ok()?.strip_suffix('Z')?;
    let (year, s) = match tag {
        UTC_TIME => {
            let yy = num(s, 0..2)? as i32;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &s[2..])
        }
        GENERALIZED_TIME => (num(s, 0..4)? as i32, &s[4..]),
        _ => return None,
    };
    unix(
        year,
        num(s, 0..2)?,
        num(s, 2..4)?,
        num(s, 4..6)?,
        num(s, 6..8)?,
        num(s, 8..10)?,
    )
}

/// An HTTP date, `Sun, 06 Nov 1994 08:49:37 GMT` (the only form servers send today).
pub fn http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, hms, "GMT"] = parts.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| m == month)? as u32 + 1;
    let hms: Vec<&str> = hms.split(':').collect();
    let [h, m, sec] = hms.as_slice() else {
        return None;
    };
    unix(
        year.parse().ok()?,
        month,
        day.parse().ok()?,
        h.parse().ok()?,
        m.parse().ok()?,
        sec.parse().ok()?,
    )
}

/// Unix seconds as `2026-11-25T16:00:00Z`.
pub fn format_unix(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| secs.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_validity_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2024, 2, 29);
        params.not_after = rcgen::date_time_ymd(2061, 7, 4); // GeneralizedTime from 2050
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (nb, na) = validity(cert.der()).unwrap();
        assert_eq!(format_unix(nb), "2024-02-29T00:00:00Z");
        assert_eq!(format_unix(na), "2061-07-04T00:00:00Z");
        assert_eq!(validity(b"garbage"), None);
        assert_eq!(validity(&cert.der()[..40]), None);
    }

    #[test]
    fn reads_http_dates() {
        assert_eq!(
            http_date("Sun, 06 Nov 1994 08:49:37 GMT").map(format_unix),
            Some("1994-11-06T08:49:37Z".to_string())
        );
        assert_eq!(http_date("Sunday, 06-Nov-94 08:49:37 GMT"), None);
        assert_eq!(http_date(""), None);
    }
}
