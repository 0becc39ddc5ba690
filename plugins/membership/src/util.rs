//! Small pure helpers: Beijing time for Alipay, short hashes, money and QR codes.

use trellis_host_api::prelude::*;

/// Milliseconds since the Unix epoch, from the WASI wall clock the host provides.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Days since 1970-01-01 as a civil (year, month, day) — Howard Hinnant's algorithm, so the
/// plugin needs no date crate for the one format Alipay wants.
fn civil(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `yyyy-MM-dd HH:mm:ss` in Beijing time (UTC+8), as Alipay's date fields expect.
pub fn beijing(ms: u64) -> String {
    let secs = (ms / 1000) as i64 + 8 * 3600;
    let (year, month, day) = civil(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// A short stable hash (FNV-1a, 64 bits, hex) for building Alipay `request_id`s that stay
/// under Alipay's length limits yet differ per merchant.
pub fn short_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Cents as Alipay's yuan text: `1234` → `12.34`.
pub fn yuan(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    format!("{sign}{}.{:02}", abs / 100, abs % 100)
}

/// The QR code of `text` as a standalone SVG document.
pub fn qr_svg(text: &str) -> Result<String> {
    let code = qrcode::QrCode::with_error_correction_level(text, qrcode::EcLevel::M)
        .map_err(|e| Error::invalid(format!("cannot encode a QR code: {e}")))?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(240, 240)
        .quiet_zone(true)
        .build())
}

/// Escapes text for a kv key segment: `/` separates segments, so it is replaced, and case is
/// folded so that searching by name ignores it.
pub fn key_segment(text: &str) -> String {
    let mut out = text.trim().to_lowercase().replace('/', " ");
    if out.len() > 120 {
        let mut end = 120;
        while !out.is_char_boundary(end) {
            end -= 1;
        }
        out.truncate(end);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beijing_time_is_eight_hours_ahead_of_utc_across_midnight() {
        // 2026-11-25T16:30:05Z is 2026-11-26 00:30:05 in Beijing.
        assert_eq!(beijing(1_795_624_205_000), "2026-11-26 00:30:05");
        assert_eq!(beijing(0), "1970-01-01 08:00:00");
        // A leap day.
        assert_eq!(beijing(951_782_400_000), "2000-02-29 08:00:00");
    }

    #[test]
    fn cents_are_shown_as_yuan() {
        assert_eq!(yuan(0), "0.00");
        assert_eq!(yuan(1234), "12.34");
        assert_eq!(yuan(-5), "-0.05");
    }

    #[test]
    fn a_qr_code_is_an_svg_document() {
        let svg =
            qr_svg("https://memberprod.alipay.com/account/openform/activecard.htm?x=1").unwrap();
        assert!(svg.contains("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn key_segments_stay_short_on_a_character_boundary() {
        let long = "会".repeat(100);
        let segment = key_segment(&long);
        assert!(segment.len() <= 120);
        assert_eq!(segment, "会".repeat(40));
        assert_eq!(key_segment(" A/b "), "a b");
    }

    #[test]
    fn hashes_are_stable_and_short() {
        assert_eq!(short_hash("m1"), short_hash("m1"));
        assert_ne!(short_hash("m1"), short_hash("m2"));
        assert_eq!(short_hash("m1").len(), 16);
    }
}
