//! Exact non-negative integers kept as base-10^18 limbs, so that decimal text is produced by
//! formatting each limb on its own (no binary-to-decimal conversion) and addition is limb-wise
//! with a carry. Only what the Fibonacci sequence needs: addition and formatting.

/// The base of one limb: 10^18 fits a `u64` and the sum of two limbs plus a carry stays below
/// 2^63, so addition needs no wide arithmetic.
pub const BASE: u64 = 1_000_000_000_000_000_000;

/// Decimal digits held by one limb.
pub const LIMB_DIGITS: usize = 18;

/// A non-negative integer; limbs little-endian (limb 0 is the lowest 18 digits). Never has a
/// zero top limb except for the number zero, which is one zero limb.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal {
    limbs: Vec<u64>,
}

impl Decimal {
    /// The number `value` (`value < 10^18`).
    pub fn small(value: u64) -> Self {
        debug_assert!(value < BASE);
        Decimal { limbs: vec![value] }
    }

    /// `self += other`.
    pub fn add_assign(&mut self, other: &Decimal) {
        if self.limbs.len() < other.limbs.len() {
            self.limbs.resize(other.limbs.len(), 0);
        }
        let mut carry = 0u64;
        for (i, limb) in self.limbs.iter_mut().enumerate() {
            let sum = *limb + other.limbs.get(i).copied().unwrap_or(0) + carry;
            let overflow = sum >= BASE;
            *limb = if overflow { sum - BASE } else { sum };
            carry = u64::from(overflow);
            if carry == 0 && i >= other.limbs.len() {
                break;
            }
        }
        if carry != 0 {
            self.limbs.push(carry);
        }
    }

    /// Number of decimal digits of the number (`0` has one).
    pub fn digit_count(&self) -> usize {
        let top = self.limbs.last().copied().unwrap_or(0);
        (self.limbs.len() - 1) * LIMB_DIGITS + digits_of(top)
    }

    /// Appends the decimal text of the number to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let mut limbs = self.limbs.iter().rev();
        let top = limbs.next().copied().unwrap_or(0);
        write_unpadded(top, out);
        for &limb in limbs {
            write_limb_padded(limb, out);
        }
    }
}

/// Four ASCII digits for each value below 10,000, built at compile time.
static DIGITS4: [[u8; 4]; 10_000] = build_digits4();

const fn build_digits4() -> [[u8; 4]; 10_000] {
    let mut table = [[0u8; 4]; 10_000];
    let mut i = 0;
    while i < 10_000 {
        table[i] = [
            b'0' + (i / 1000) as u8,
            b'0' + (i / 100 % 10) as u8,
            b'0' + (i / 10 % 10) as u8,
            b'0' + (i % 10) as u8,
        ];
        i += 1;
    }
    table
}

/// Writes `value < 10^9` as exactly nine digits.
#[inline]
fn nine_digits(value: u32, out: &mut [u8]) {
    let head = value / 100_000_000;
    let rest = value % 100_000_000;
    out[0] = b'0' + head as u8;
    out[1..5].copy_from_slice(&DIGITS4[(rest / 10_000) as usize]);
    out[5..9].copy_from_slice(&DIGITS4[(rest % 10_000) as usize]);
}

/// Appends `limb < 10^18` as exactly 18 digits (leading zeros kept).
#[inline]
fn write_limb_padded(limb: u64, out: &mut Vec<u8>) {
    let mut buf = [0u8; LIMB_DIGITS];
    nine_digits((limb / 1_000_000_000) as u32, &mut buf[..9]);
    nine_digits((limb % 1_000_000_000) as u32, &mut buf[9..]);
    out.extend_from_slice(&buf);
}

/// Appends `value < 10^18` with no leading zeros.
fn write_unpadded(value: u64, out: &mut Vec<u8>) {
    let mut buf = [0u8; LIMB_DIGITS];
    nine_digits((value / 1_000_000_000) as u32, &mut buf[..9]);
    nine_digits((value % 1_000_000_000) as u32, &mut buf[9..]);
    let skip = LIMB_DIGITS - digits_of(value);
    out.extend_from_slice(&buf[skip..]);
}

/// Decimal digits of `value` (`0` has one).
fn digits_of(value: u64) -> usize {
    match value.checked_ilog10() {
        Some(log) => log as usize + 1,
        None => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text(d: &Decimal) -> String {
        let mut out = Vec::new();
        d.write_to(&mut out);
        String::from_utf8(out).expect("digits are ASCII")
    }

    #[test]
    fn zero_is_written_as_one_digit() {
        assert_eq!(text(&Decimal::small(0)), "0");
        assert_eq!(Decimal::small(0).digit_count(), 1);
    }

    #[test]
    fn carry_creates_a_new_limb_and_inner_limbs_are_zero_padded() {
        let mut a = Decimal::small(BASE - 1);
        a.add_assign(&Decimal::small(1));
        assert_eq!(text(&a), format!("1{}", "0".repeat(18)));
        assert_eq!(a.digit_count(), 19);
        a.add_assign(&Decimal::small(7));
        assert_eq!(text(&a), format!("1{}7", "0".repeat(17)));
    }

    #[test]
    fn adding_a_longer_number_extends_the_shorter() {
        let mut long = Decimal::small(BASE - 1);
        long.add_assign(&Decimal::small(BASE - 1));
        let mut short = Decimal::small(5);
        short.add_assign(&long);
        assert_eq!(text(&short), "2000000000000000003");
    }

    proptest! {
        #[test]
        fn sums_match_u128_arithmetic(values in proptest::collection::vec(0u64..BASE, 1..40)) {
            let mut acc = Decimal::small(0);
            let mut reference: u128 = 0;
            for v in values {
                acc.add_assign(&Decimal::small(v));
                reference += u128::from(v);
                prop_assert_eq!(text(&acc), reference.to_string());
                prop_assert_eq!(acc.digit_count(), reference.to_string().len());
            }
        }
    }
}
