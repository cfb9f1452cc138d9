//! Lengths known before any digit is produced: the decimal digit count of F(n) from a closed
//! form, so a streamed answer can announce its exact size (HTTP `Content-Length`, the back-end
//! protocol's 8-byte length prefix) before the numbers are computed.
//!
//! For n >= 2, F(n) = round(phi^n / sqrt 5) and the error term is below 10^-40 once n >= 100,
//! so `digits(F(n)) = floor(n * log10(phi) - log10(sqrt 5)) + 1`. Computed in `f64` the
//! argument is off by far less than 10^-9 for every n up to [`MAX_N`]; the unit tests check
//! that no n in that range has its argument within 10^-9 of an integer (so the floor is never
//! in doubt) and that the formula agrees with exact arithmetic. Below 100, exact `u128` values.

/// Largest N for which the closed form is proven exact by the tests (and so the largest
/// `limit` a configuration may set).
pub const MAX_N: u64 = 1_000_000;

const EXACT_BELOW: u64 = 100;

/// Decimal digits of F(n).
pub fn fib_digits(n: u64) -> u64 {
    if n < EXACT_BELOW {
        return small_fib(n).to_string().len() as u64;
    }
    closed_form_argument(n).floor() as u64 + 1
}

/// Bytes of the text "F(from) F(from+1) ... F(to-1)" (single spaces, none at the ends).
pub fn text_len(from: u64, to: u64) -> u64 {
    if to <= from {
        return 0;
    }
    let digits: u64 = (from..to).map(fib_digits).sum();
    digits + (to - from - 1)
}

/// F(n) for n < 100, exactly.
fn small_fib(n: u64) -> u128 {
    let (mut a, mut b) = (0u128, 1u128);
    for _ in 0..n {
        (a, b) = (b, a + b);
    }
    a
}

fn closed_form_argument(n: u64) -> f64 {
    const LOG10_PHI: f64 = 0.208_987_640_249_978_73;
    const LOG10_SQRT5: f64 = 0.349_485_002_168_009_4;
    n as f64 * LOG10_PHI - LOG10_SQRT5
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decimal::Decimal;

    #[test]
    fn small_values_are_exact() {
        assert_eq!(fib_digits(0), 1);
        assert_eq!(fib_digits(1), 1);
        assert_eq!(fib_digits(7), 2);
        assert_eq!(fib_digits(12), 3);
        assert_eq!(text_len(0, 10), "0 1 1 2 3 5 8 13 21 34".len() as u64);
        assert_eq!(text_len(3, 3), 0);
    }

    #[test]
    fn closed_form_is_never_near_a_digit_boundary_up_to_max_n() {
        for n in EXACT_BELOW..=MAX_N {
            let x = closed_form_argument(n);
            let distance = (x - x.round()).abs();
            assert!(
                distance > 1e-9,
                "n = {n}: argument {x} too close to an integer"
            );
        }
    }

    #[test]
    fn closed_form_matches_exact_digit_counts() {
        // Every n up to the default limit, by exact addition (seconds in a debug build).
        let (mut a, mut b) = (Decimal::small(0), Decimal::small(1));
        for n in 0..=100_000u64 {
            assert_eq!(fib_digits(n), a.digit_count() as u64, "n = {n}");
            a.add_assign(&b);
            std::mem::swap(&mut a, &mut b);
        }
    }
}
