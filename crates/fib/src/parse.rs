//! Strict parsing of N, shared by the REST path segment and the back-end protocol: ASCII digits
//! only (leading zeros allowed), no sign, no fraction, `1 <= N <= limit`. Any length of input is
//! handled without overflow; the error names what was wrong and the limit.

/// Why an N was refused. Each message names the limit so the caller learns the valid range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadN {
    #[error("N is missing: ask for /fib/<N> with N from 1 to {limit}")]
    Missing { limit: u64 },
    #[error("N must be ASCII digits only (no sign, fraction or other characters), got \"{shown}\"; N ranges from 1 to {limit}")]
    NotDigits { shown: String, limit: u64 },
    #[error("N must be at least 1, got 0; N ranges from 1 to {limit}")]
    Zero { limit: u64 },
    #[error("N = {shown} is over the limit of {limit}")]
    OverLimit { shown: String, limit: u64 },
}

/// Longest piece of bad input quoted back in an error message.
const SHOWN_MAX: usize = 40;

/// Parses `raw` as N within `1..=limit`.
pub fn parse_n(raw: &str, limit: u64) -> Result<u64, BadN> {
    if raw.is_empty() {
        return Err(BadN::Missing { limit });
    }
    if !raw.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadN::NotDigits {
            shown: shown(raw),
            limit,
        });
    }
    let significant = raw.trim_start_matches('0');
    if significant.is_empty() {
        return Err(BadN::Zero { limit });
    }
    // More than 20 significant digits cannot fit a u64 (checked parse catches the rest).
    let value = if significant.len() > 20 {
        None
    } else {
        significant.parse::<u64>().ok()
    };
    match value {
        Some(n) if n <= limit => Ok(n),
        _ => Err(BadN::OverLimit {
            shown: shown(significant),
            limit,
        }),
    }
}

/// `raw`, cut to [`SHOWN_MAX`] characters with an ellipsis, for quoting in a message.
fn shown(raw: &str) -> String {
    if raw.chars().count() <= SHOWN_MAX {
        return raw.to_string();
    }
    let mut cut: String = raw.chars().take(SHOWN_MAX).collect();
    cut.push_str("...");
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMIT: u64 = 100_000;

    #[test]
    fn accepts_digits_with_leading_zeros() {
        assert_eq!(parse_n("10", LIMIT), Ok(10));
        assert_eq!(parse_n("007", LIMIT), Ok(7));
        assert_eq!(parse_n("100000", LIMIT), Ok(100_000));
    }

    #[test]
    fn refuses_each_kind_of_bad_input_naming_the_limit() {
        for raw in ["-1", "+1", "abc", "1.5", "1/", " 1", "1e3", "١"] {
            let err = parse_n(raw, LIMIT).expect_err(raw);
            assert!(matches!(err, BadN::NotDigits { .. }), "{raw}: {err}");
            assert!(err.to_string().contains("100000"), "{err}");
        }
        assert_eq!(parse_n("0", LIMIT), Err(BadN::Zero { limit: LIMIT }));
        assert_eq!(parse_n("000", LIMIT), Err(BadN::Zero { limit: LIMIT }));
        assert_eq!(parse_n("", LIMIT), Err(BadN::Missing { limit: LIMIT }));
    }

    #[test]
    fn refuses_numbers_over_the_limit_without_overflow() {
        let thirty = "123456789012345678901234567890";
        let err = parse_n(thirty, LIMIT).expect_err("30 digits");
        assert!(matches!(err, BadN::OverLimit { .. }));
        assert!(err.to_string().contains(thirty));
        assert!(matches!(
            parse_n("100001", LIMIT),
            Err(BadN::OverLimit { .. })
        ));
        assert!(matches!(
            parse_n("18446744073709551616", u64::MAX),
            Err(BadN::OverLimit { .. })
        ));
        assert_eq!(parse_n("18446744073709551615", u64::MAX), Ok(u64::MAX));
    }

    #[test]
    fn long_input_is_cut_in_the_message() {
        let raw = "x".repeat(10_000);
        let message = parse_n(&raw, LIMIT).expect_err("letters").to_string();
        assert!(message.len() < 200, "{message}");
    }

    proptest! {
        #[test]
        fn agrees_with_a_reference_parser(raw in "[0-9+\\-. a-z]{0,25}") {
            let reference = if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) {
                raw.parse::<u128>().ok().filter(|&n| n >= 1 && n <= u128::from(LIMIT))
            } else {
                None
            };
            let ours = parse_n(&raw, LIMIT).ok().map(u128::from);
            prop_assert_eq!(ours, reference);
        }
    }
}
